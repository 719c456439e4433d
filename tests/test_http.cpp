// The HTTP side's pure parts: the request decoder's limits, Range parsing,
// escaping, and the Prometheus text the metrics are scraped in.
#include <catch2/catch.hpp>

#include <string>

#include "p2pshare/http.hpp"
#include "p2pshare/metrics.hpp"

using namespace p2pshare;
using State = http::RequestParser::State;

namespace {

State feed_all(http::RequestParser& parser, const std::string& bytes, std::size_t piece = 7) {
  for (std::size_t at = 0; at < bytes.size() && parser.state() == State::incomplete; at += piece) {
    const auto part = bytes.substr(at, piece);
    parser.feed(part.data(), part.size());
  }
  return parser.state();
}

}  // namespace

TEST_CASE("http: a request arrives in pieces: path decoded, query kept, headers lowercased", "[http]") {
  http::RequestParser parser{http::Limits{}};
  REQUIRE(feed_all(parser,
                   "POST /files/a%20b?token=x%2By&x=1 HTTP/1.1\r\nHost: h\r\nX-Thing: V\r\n"
                   "Content-Length: 5\r\n\r\nhello") == State::complete);
  const auto& r = parser.request();
  CHECK(r.method == "POST");
  CHECK(r.path == "/files/a b");
  CHECK(r.query_param("token") == "x+y");
  CHECK(r.query_param("x") == "1");
  CHECK_FALSE(r.query_param("y"));
  CHECK(r.header("x-thing") == "V");
  CHECK(r.body == "hello");
}

TEST_CASE("http: the decoder refuses garbage, large headers and large bodies", "[http]") {
  http::Limits limits;
  limits.max_header_bytes = 100;
  limits.max_body_bytes = 10;
  {
    http::RequestParser parser(limits);
    CHECK(feed_all(parser, std::string("\x16\x03\x01\x02\x00garbage", 12)) == State::refused);
    CHECK(parser.refusal_status() == 400);
  }
  {
    http::RequestParser parser(limits);
    CHECK(feed_all(parser, "GET / HTTP/1.1\r\nX: " + std::string(200, 'a') + "\r\n\r\n") == State::refused);
    CHECK(parser.refusal_status() == 431);
  }
  {  // refused from Content-Length, before the body
    http::RequestParser parser(limits);
    CHECK(feed_all(parser, "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n") == State::refused);
    CHECK(parser.refusal_status() == 413);
  }
  {  // a chunked body counted as it comes
    http::RequestParser parser(limits);
    CHECK(feed_all(parser, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n") ==
          State::refused);
    CHECK(parser.refusal_status() == 413);
  }
  {  // incomplete stays incomplete (the connection's deadline ends it)
    http::RequestParser parser(limits);
    CHECK(feed_all(parser, "GET / HTTP/1.1\r\nHost:") == State::incomplete);
  }
}

TEST_CASE("http: one byte range, inside the file, or none", "[http]") {
  using http::parse_range;
  CHECK(parse_range("bytes=0-9", 100)->last == 9);
  CHECK(parse_range("bytes=90-200", 100)->last == 99);  // clamped to the end
  CHECK(parse_range("bytes=95-", 100)->first == 95);
  CHECK(parse_range("bytes=-10", 100)->first == 90);
  CHECK(parse_range("bytes=-1000", 100)->first == 0);
  for (const char* bad : {"bytes=100-", "bytes=5-4", "bytes=-0", "bytes=a-b", "bytes=1-2,3-4", "items=1-2",
                          "bytes=", "bytes=-", "bytes=99999999999999999999-", "bytes=1 -2"}) {
    INFO(bad);
    CHECK_FALSE(parse_range(bad, 100));
  }
  CHECK_FALSE(parse_range("bytes=0-0", 0));
}

TEST_CASE("http: names are escaped for HTML", "[http]") {
  CHECK(http::escape_html("<script>alert('x')</script> & \"y\"") ==
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;");
  CHECK(http::percent_decode("%41%zz%4", false) == "A%zz%4");
}

TEST_CASE("metrics: counters, gauges and cumulative histogram buckets in the text format", "[http]") {
  metrics::Counter counter;
  counter.add(3);
  counter.add();
  metrics::Histogram histogram;
  histogram.observe(0.0002);
  histogram.observe(0.03);
  histogram.observe(100);
  metrics::MetricsText text;
  text.counter("p2pshare_x_total", "X.", counter.value());
  text.gauge("p2pshare_y", "Y.", 2.5);
  text.histogram("p2pshare_z_seconds", "Z.", histogram);
  const auto& t = text.text();
  CHECK(t.find("# TYPE p2pshare_x_total counter\np2pshare_x_total 4\n") != std::string::npos);
  CHECK(t.find("p2pshare_y 2.5\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_bucket{le=\"0.0001\"} 0\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_bucket{le=\"0.0005\"} 1\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_bucket{le=\"0.05\"} 2\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_bucket{le=\"10\"} 2\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_bucket{le=\"+Inf\"} 3\n") != std::string::npos);
  CHECK(t.find("p2pshare_z_seconds_count 3\n") != std::string::npos);
}
