/*
 * What bench/sessload.c and bench/retrload.c share: clocks, the measuring
 * window, error samples, waiting for the start time, and the JSON fields
 * every result ends with. Included by both (each is one translation unit).
 */
#ifndef POPLAR_BENCH_LOADGEN_H
#define POPLAR_BENCH_LOADGEN_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAX_SAMPLES = 5 };

static double t_warm, t_end;
static long errors;
static char samples[MAX_SAMPLES][200];
static int nsamples;

static inline double now_real(void) { struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static inline double now_mono(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }

static inline int in_window(void) { double n = now_real(); return n >= t_warm && n <= t_end; }

/* Count an error inside the window (all errors when `always`), keeping a few distinct samples. */
static inline void error_count(const char *what, int always) {
  if (!always && !in_window()) return;
  errors++;
  for (int i = 0; i < nsamples; i++) if (strcmp(samples[i], what) == 0) return;
  if (nsamples < MAX_SAMPLES) snprintf(samples[nsamples++], sizeof samples[0], "%s", what);
}

static inline void sleep_until(double start) {
  for (double n = now_real(); n < start; n = now_real()) usleep((useconds_t)((start - n) * 1000 > 1000 ? 1000 : (start - n) * 1000));
}

/* Rusage at the window's start and end, taken from the main loop. */
struct window_cpu { struct rusage r0, r1; int have0, have1; double w0, w1; };

static inline void window_tick(struct window_cpu *w) {
  const double n = now_real();
  if (!w->have0 && n >= t_warm) { getrusage(RUSAGE_SELF, &w->r0); w->w0 = n; w->have0 = 1; }
  if (!w->have1 && n >= t_end) { getrusage(RUSAGE_SELF, &w->r1); w->w1 = n; w->have1 = 1; }
}

static inline void window_finish(struct window_cpu *w) {
  if (!w->have1) { getrusage(RUSAGE_SELF, &w->r1); w->w1 = now_real(); w->have1 = 1; }
}

static inline void print_samples(void) {
  printf("\"errorSamples\":[");
  for (int i = 0; i < nsamples; i++) {
    printf("%s\"", i ? "," : "");
    for (const char *p = samples[i]; *p; p++) printf(*p == '"' || *p == '\\' ? "\\%c" : (*p < 0x20 ? "?" : "%c"), *p);
    printf("\"");
  }
  printf("]");
}

/* The closing fields of a result: CPU used inside the window, and the window's length. */
static inline void print_cpu(const struct window_cpu *w) {
  const long uu = (w->r1.ru_utime.tv_sec - w->r0.ru_utime.tv_sec) * 1000000L + (w->r1.ru_utime.tv_usec - w->r0.ru_utime.tv_usec);
  const long su = (w->r1.ru_stime.tv_sec - w->r0.ru_stime.tv_sec) * 1000000L + (w->r1.ru_stime.tv_usec - w->r0.ru_stime.tv_usec);
  printf("\"cpuUserUs\":%ld,\"cpuSystemUs\":%ld,\"windowMs\":%.0f}\n", uu, su, w->w1 - w->w0);
}

/* A non-blocking connection to 127.0.0.1:port (TCP_NODELAY), watched by epfd for input with `ptr`; -errno on failure. */
static inline int connect_loopback(int epfd, int port, void *ptr) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
    const int err = errno;
    close(fd);
    return -err;
  }
  struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = ptr };
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  return fd;
}

#endif
