// Calls no malloc-family function itself: glibc's strdup does. Its block is
// amalloc's only if libamalloc.a was linked whole.
#include <amalloc/amalloc.h>

#include <cstdio>
#include <cstring>

int main() {
  char* s = strdup("probe");
  std::printf("probe: am_owns(strdup)=%d\n", am_owns(s));
  return am_owns(s) == 1 ? 0 : 1;
}
