// Errors at module edges. A p2pshare::Error carries a user-facing message
// (one line, says what went wrong and where it helps what to do) and a code
// that maps onto the wire's ErrorCode and onto exit statuses. Thrown inside
// a module; where a result crosses threads or callbacks (a disk job's, a
// download's), it travels as a Failure value instead.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>

namespace p2pshare {

enum class Errc {
  bad_request = 1,
  not_found = 2,
  unauthorized = 3,
  no_holders = 4,
  io = 5,
  unavailable = 6,
  protocol = 7,
  verification = 8,
  limit = 9,    // a per-peer quota is full: a retry gets the same answer until the peer holds less
  usage = 100,  // the command line is wrong: exit status 2
};

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

// errno as text, thread-safe (std::strerror shares one buffer between threads).
inline std::string errno_text(int err) {
  return std::generic_category().message(err);
}

// An error as a value: a failed disk job's or download's outcome, carried to
// whoever reports it (a control answer, and so a client's exit status).
struct Failure {
  Errc code = Errc::io;
  std::string message;
};

// What an exception caught at a handler boundary becomes as a value: an
// Error keeps its code, anything else gets `otherwise`.
inline Failure failure_from(const std::exception& e, Errc otherwise) {
  if (const auto* error = dynamic_cast<const Error*>(&e)) return Failure{error->code(), error->what()};
  return Failure{otherwise, e.what()};
}

// The code's name as scripts see it (request-file --json): "io", "no_holders", ...
inline const char* errc_name(Errc code) {
  switch (code) {
    case Errc::bad_request:
      return "bad_request";
    case Errc::not_found:
      return "not_found";
    case Errc::unauthorized:
      return "unauthorized";
    case Errc::no_holders:
      return "no_holders";
    case Errc::io:
      return "io";
    case Errc::unavailable:
      return "unavailable";
    case Errc::protocol:
      return "protocol";
    case Errc::verification:
      return "verification";
    case Errc::limit:
      return "limit";
    case Errc::usage:
      return "usage";
  }
  return "unknown";
}

}  // namespace p2pshare
