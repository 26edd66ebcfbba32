// A tiny formatter into a fixed buffer, for reports that must not call
// printf (which may allocate).
#pragma once
#include <cstddef>
#include <cstdint>

namespace am {

struct Out {
  char buf[1024];
  size_t len = 0;
  Out& str(const char* s);
  Out& num(uint64_t v);
  Out& hex(uint64_t v);
  Out& bytes(uint64_t v);  // 12.3 MiB
  Out& ch(char c);
  void flush(int fd);  // write and reset
};

}  // namespace am
