#include "common/host_port.h"

#include <gtest/gtest.h>

namespace fedpers {
namespace {

TEST(HostPortTest, AcceptsWhatGrpcDialsAsWritten) {
  for (const char* ok : {"127.0.0.1:7443", "[::1]:7443", "coord.example.org:443", "localhost:65535", "unix:/tmp/s"}) {
    EXPECT_TRUE(CheckHostPort(ok, false).ok()) << ok << ": " << CheckHostPort(ok, false);
  }
  EXPECT_TRUE(CheckHostPort("127.0.0.1:0", /*allow_port_zero=*/true).ok());
}

// Each of these would otherwise reach another port (gRPC wraps at 65536 and
// defaults to 443) or fail far from the typo.
TEST(HostPortTest, NamesWhatIsWrong) {
  auto message = [](const char* address, bool zero = false) {
    return std::string(CheckHostPort(address, zero).message());
  };
  EXPECT_NE(message("127.0.0.1:70000").find("port 70000 is out of range (1-65535)"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:99999", true).find("or 0 for any"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:0").find("out of range"), std::string::npos);
  EXPECT_NE(message("127.0.0.1").find("no port given"), std::string::npos);
  EXPECT_NE(message("notanaddr").find("no port given"), std::string::npos);
  EXPECT_NE(message("::1:7443").find("in brackets"), std::string::npos);
  EXPECT_NE(message("[::1]7443").find("[IPV6]:PORT"), std::string::npos);
  EXPECT_NE(message("host:74a3").find("'74a3' is not a number"), std::string::npos);
  EXPECT_NE(message("host:-1").find("not a number"), std::string::npos);
  EXPECT_NE(message(":7443").find("no host"), std::string::npos);
  EXPECT_NE(message("host:").find("'' is not a number"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:70000").find("address '127.0.0.1:70000'"), std::string::npos);
}

}  // namespace
}  // namespace fedpers
