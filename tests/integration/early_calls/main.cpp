// Allocation at awkward moments: before any constructor (.preinit_array runs
// before every library's constructors, amalloc's included), inside dlopen,
// dlsym and dlerror, and while glibc sets up dynamic TLS for new threads.
// Each block must come from amalloc (am_owns, looked up with dlsym so the
// same program serves the LD_PRELOAD and the static-link runs).
#include <dlfcn.h>
#include <pthread.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

void* g_preinit_block;
char* g_preinit_copy;

void preinit() {
  g_preinit_block = malloc(100);
  memset(g_preinit_block, 0x5a, 100);
  g_preinit_copy = strdup("allocated before constructors");
  void* tmp = malloc(5000);
  free(tmp);
}

int failures = 0;
void check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    failures++;
  }
}

}  // namespace

__attribute__((section(".preinit_array"), used)) static void (*const g_preinit)() = preinit;

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s path/to/libtls_lib.so\n", argv[0]);
    return 2;
  }
  auto owns = reinterpret_cast<int (*)(const void*)>(dlsym(RTLD_DEFAULT, "am_owns"));
  check(owns != nullptr, "am_owns not found: amalloc is not in this process");
  if (!owns) return 1;

  check(owns(g_preinit_block), "block from .preinit_array is not amalloc's");
  check(owns(g_preinit_copy), "strdup from .preinit_array is not amalloc's");
  check(static_cast<unsigned char*>(g_preinit_block)[99] == 0x5a, "preinit block contents");
  free(g_preinit_block);
  free(g_preinit_copy);

  // dlerror keeps a malloc'ed message; dlopen and dlsym allocate too.
  check(dlsym(RTLD_DEFAULT, "no_such_symbol_anywhere") == nullptr, "dlsym of a missing symbol");
  const char* err = dlerror();
  check(err != nullptr && strstr(err, "no_such_symbol_anywhere") != nullptr, "dlerror message");
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  check(lib != nullptr, "dlopen of the TLS library");
  if (!lib) {
    fprintf(stderr, "%s\n", dlerror());
    return 1;
  }
  auto use = reinterpret_cast<size_t (*)(int)>(dlsym(lib, "tls_lib_use"));
  check(use != nullptr, "dlsym tls_lib_use");

  // New threads: each first access to the library's TLS allocates its block.
  for (int round = 0; round < 20; round++) {
    std::vector<std::thread> threads;
    std::vector<size_t> got(8);
    for (int t = 0; t < 8; t++)
      threads.emplace_back([&, t] {
        void* p = malloc(64);
        got[t] = use(100 + t) + (owns(p) ? 0 : 1000000);
        free(p);
      });
    for (auto& th : threads) th.join();
    for (int t = 0; t < 8; t++)
      check(got[t] == static_cast<size_t>(100 + t + 1), "TLS string in a new thread");
  }
  dlclose(lib);

  std::string s(1000, 'x');
  check(owns(s.data()), "operator new is not amalloc's");
  if (failures) return 1;
  printf("early calls ok\n");
  return 0;
}
