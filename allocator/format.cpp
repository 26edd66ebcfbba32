#include "allocator/format.h"

#include "allocator/os.h"

namespace am {

Out& Out::ch(char c) {
  if (len + 1 >= sizeof buf) flush(2);
  buf[len++] = c;
  return *this;
}

Out& Out::str(const char* s) {
  while (*s) ch(*s++);
  return *this;
}

Out& Out::num(uint64_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) ch(tmp[--n]);
  return *this;
}

Out& Out::hex(uint64_t v) {
  str("0x");
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  while (n) ch(tmp[--n]);
  return *this;
}

Out& Out::bytes(uint64_t v) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  uint64_t whole = v, tenths = 0;
  while (whole >= 1024 && u < 4) {
    tenths = (whole % 1024) * 10 / 1024;
    whole /= 1024;
    u++;
  }
  num(whole);
  if (u > 0) ch('.').num(tenths);
  return ch(' ').str(kUnits[u]);
}

void Out::flush(int fd) {
  os_write(fd, buf, len);
  len = 0;
}

}  // namespace am
