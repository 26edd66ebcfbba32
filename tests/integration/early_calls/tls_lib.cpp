// Loaded with dlopen: its thread_local lives in dynamic TLS, which glibc
// allocates with malloc inside __tls_get_addr on each thread's first access.
#include <string>

namespace {
thread_local std::string t_text;
thread_local char t_block[4096];
}  // namespace

extern "C" __attribute__((visibility("default"))) size_t tls_lib_use(int n) {
  for (int i = 0; i < n; i++) t_text += static_cast<char>('a' + i % 26);
  t_block[n % sizeof t_block] = 1;
  return t_text.size() + static_cast<size_t>(t_block[n % sizeof t_block]);
}
