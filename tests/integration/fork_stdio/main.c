/* fork() under LD_PRELOAD=libamalloc.so with AMALLOC_MESH=1, where FILEs and
 * glibc's thread-specific data live in amalloc's heap: a thread opens and
 * closes files, another holds pthread keys past the 32 glibc keeps inline,
 * the main thread keeps a FILE open and forks. glibc writes into those
 * heap objects in the child before any fork handler runs, and takes the
 * FILE list lock after the prepare handlers: neither may hang while the
 * heap is read-only for fork's copy. Each child writes to the open FILE
 * and exits; a child that does not exit within 20 s is a failure. Built
 * without amalloc; the test script preloads it. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static pthread_key_t keys[40];

static void* opener(void* arg) {
  (void)arg;
  while (!stop) {
    FILE* f = fopen("/dev/null", "w");
    if (f) {
      fputs("x", f);
      fclose(f);
    }
  }
  return NULL;
}

static void* key_user(void* arg) {
  (void)arg;
  pthread_setspecific(keys[39], (void*)1);
  while (!stop) usleep(1000);
  return NULL;
}

int main(int argc, char** argv) {
  int forks = argc > 1 ? atoi(argv[1]) : 100;
  /* Enough blocks that FILEs and key blocks land in pages of the memory file. */
  for (int i = 0; i < 20000; i++) {
    void* volatile p = malloc(512);
    (void)p;
  }
  for (int i = 0; i < 40; i++) pthread_key_create(&keys[i], NULL);
  FILE* log = tmpfile();
  if (!log) return 2;
  pthread_t a, b;
  pthread_create(&a, NULL, opener, NULL);
  pthread_create(&b, NULL, key_user, NULL);
  int failed = 0;
  for (int i = 0; i < forks && !failed; i++) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return 3;
    if (pid == 0) {
      fprintf(log, "child %d\n", i);
      _exit(fflush(log) == 0 ? 0 : 1);
    }
    int status = 0;
    time_t deadline = time(NULL) + 20;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (time(NULL) > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fprintf(stderr, "FAIL: fork child %d hung\n", i);
        failed = 1;
        break;
      }
      usleep(1000);
    }
    if (!failed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      fprintf(stderr, "FAIL: fork child %d did not exit cleanly (status %d)\n", i, status);
      failed = 1;
    }
  }
  stop = 1;
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  fclose(log);
  if (!failed) printf("%d forks, every child exited\n", forks);
  return failed;
}
