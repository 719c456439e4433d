// A tiny blocking HTTP/1.1 client for the tests, header-only: one request per
// connection over loopback, the answer read to EOF (the servers close after
// each answer). Bounded by a receive timeout on the socket.
#pragma once

#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support/hostile.hpp"

namespace p2pshare::test {

struct HttpAnswer {
  int status = 0;                                            // 0: no answer (refused, cut, timed out)
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;
  std::optional<std::string> header(const std::string& name) const {
    for (const auto& [key, value] : headers) {
      if (key == name) return value;
    }
    return std::nullopt;
  }
};

// `extra`: more header lines, each "Name: value".
inline HttpAnswer http_request(const std::string& address, const std::string& method, const std::string& target,
                               const std::vector<std::string>& extra = {}, const std::string& body = {},
                               int timeout_seconds = 60) {
  HttpAnswer answer;
  const int fd = raw_connect(address);
  if (fd < 0) return answer;
  timeval tv{timeout_seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string request = method + " " + target + " HTTP/1.1\r\nHost: " + address + "\r\n";
  for (const auto& line : extra) request += line + "\r\n";
  if (!body.empty() || method == "POST") request += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  request += "\r\n" + body;
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return answer;
  }
  std::string raw;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    raw.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  const auto end = raw.find("\r\n\r\n");
  if (end == std::string::npos || !raw.starts_with("HTTP/1.1 ")) return answer;
  answer.status = std::stoi(raw.substr(9, 3));
  std::size_t pos = raw.find("\r\n") + 2;
  while (pos < end) {
    const auto line_end = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, line_end - pos);
    const auto colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    answer.headers.emplace_back(std::move(name), std::move(value));
    pos = line_end + 2;
  }
  answer.body = raw.substr(end + 4);
  return answer;
}

}  // namespace p2pshare::test
