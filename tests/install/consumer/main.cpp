// Usage: consumer override|core. With "override", malloc and new must come
// from amalloc; with "core" (amalloc::core, no override) they must not, and
// am_malloc must.
#include <amalloc/amalloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  bool override = argc > 1 && std::strcmp(argv[1], "override") == 0;
  void* m = std::malloc(64);
  int* n = new int(1);
  void* a = am_malloc(64);
  int want = override ? 1 : 0;
  std::printf("%s: am_owns(malloc)=%d am_owns(new)=%d am_owns(am_malloc)=%d\n", argv[0], am_owns(m),
              am_owns(n), am_owns(a));
  bool ok = am_owns(m) == want && am_owns(n) == want && am_owns(a) == 1;
  am_free(a);
  delete n;
  std::free(m);
  return ok ? 0 : 1;
}
