// request-file --stdout on the peer-server's side: the file's bytes go back
// over the owner's control connection, in order, a chunk only once it is
// verified and written (read back from the partial file or the finished
// one), while the download runs.
//
// Backpressure: the next chunk is read only when the control connection has
// less than kQueuedBytes unsent, and the download fetches only a read-ahead
// window past the stream's position (Swarm::set_stream_position). A reader
// that stops stops the download once the window is on disk; memory holds at
// most 4 MiB of chunks being read and the queue, whatever the file's size.
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
// the caller.
void start_stream(const std::shared_ptr<wire::Connection>& connection, const std::shared_ptr<Swarm>& swarm);

}  // namespace p2pshare::peer
