// Linked statically against libamalloc.a (whole archive), with no LD_PRELOAD:
// every allocation path must land in amalloc, including the ones glibc and
// libstdc++ make on our behalf.
#include <amalloc/amalloc.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

static int failures = 0;

static void check(const char* what, const void* p, std::size_t align = 16) {
  bool ok = p != nullptr && am_owns(p) == 1 && reinterpret_cast<std::uintptr_t>(p) % align == 0;
  std::printf("%-28s %s\n", what, ok ? "amalloc" : "NOT amalloc");
  failures += !ok;
}

struct alignas(256) Aligned {
  char bytes[300];
};

int main() {
  const char* preload = std::getenv("LD_PRELOAD");
  if (preload != nullptr && *preload != '\0') {
    std::printf("LD_PRELOAD is set (%s): this test must run without it\n", preload);
    return 1;
  }

  void* m = std::malloc(100);
  check("malloc", m);
  void* c = std::calloc(10, 10);
  check("calloc", c);
  m = std::realloc(m, 100000);
  check("realloc", m);
  void* pm = nullptr;
  check("posix_memalign(4096)", posix_memalign(&pm, 4096, 100) == 0 ? pm : nullptr, 4096);
  char* dup = strdup("made by glibc's strdup");  // glibc calls malloc internally
  check("strdup", dup);

  int* n = new int(42);
  check("operator new", n);
  int* arr = new int[1000];
  check("operator new[]", arr);
  auto* al = new Aligned;
  check("aligned operator new(256)", al, alignof(Aligned));
  auto* nt = new (std::nothrow) Aligned[3];
  check("aligned nothrow new[]", nt, alignof(Aligned));
  std::string s(1000, 'x');  // libstdc++'s own operator new calls
  check("std::string", s.data());
  std::vector<double> v(5000);
  check("std::vector", v.data());

  delete[] nt;
  delete al;
  delete[] arr;
  delete n;
  std::free(dup);
  std::free(pm);
  std::free(c);
  std::free(m);

  if (std::strcmp(am_version(), AMALLOC_VERSION_STRING) != 0) {
    std::printf("am_version() = %s, header says %s\n", am_version(), AMALLOC_VERSION_STRING);
    ++failures;
  }
  std::printf("%s\n",
              failures == 0 ? "static link: all allocations from amalloc" : "static link: FAILED");
  return failures == 0 ? 0 : 1;
}
