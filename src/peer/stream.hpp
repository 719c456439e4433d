// request-file --stdout on the peer-server's side: the file's bytes go back
// over the owner's control connection, in order, a chunk only once it is
// verified and written, while the download runs.
//
// While the file downloads, each chunk comes from the download's own buffer
// as it is verified and written (Swarm::add_chunk_tap): the partial file is
// written O_DIRECT, so reading it back would go to the disk. Chunks the tap
// did not keep (held past the budget, verified from a resume state, or the
// file already complete) are read from the file.
//
// Backpressure: chunks are sent, and read, only while the control
// connection has less than kQueuedBytes unsent, and the download fetches
// only a read-ahead window past the stream's position
// (Swarm::set_stream_position). A reader that stops stops the download once
// the window is fetched; memory holds at most the window's 16 MiB of chunks
// and the 4 MiB queue, whatever the file's size.
//
// Threading: network thread only; the chunk reads go to the disk pool
// through Swarm::read_chunk.
#pragma once

#include <memory>

#include "p2pshare/wire.hpp"
#include "peer/swarm.hpp"

namespace p2pshare::peer {

// Streams `swarm`'s file to `connection`, then answers Downloaded (or Error
// if the download fails). The swarm is seeding or its download is started by
// the caller. `payloads` (RequestFile.stream_payloads): each piece's bytes
// travel as its frame's payload, straight from the chunk buffer; otherwise
// inside StreamData.data (docs/protocol.md, "Streams").
void start_stream(const std::shared_ptr<wire::Connection>& connection, const std::shared_ptr<Swarm>& swarm,
                  bool payloads);

}  // namespace p2pshare::peer
