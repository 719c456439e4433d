// Errors at module edges. A p2pshare::Error carries a user-facing message
// (one line, says what went wrong and where it helps what to do) and a code
// that maps onto the wire's ErrorCode and onto exit statuses.
#pragma once

#include <stdexcept>
#include <string>

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
  usage = 100,  // the command line is wrong: exit status 2
};

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

}  // namespace p2pshare
