/*
 * The sessions/s load generator, compiled (bench/run.ts builds it with cc
 * into bench/.work/ and falls back to the Node one in bench/load.ts when no
 * compiler is there). It does exactly what load.ts's runSessions does, at a
 * fraction of the CPU, so that the load generator takes less of the cores the
 * servers are measured on.
 *
 *   sessload PORT START_AT_MS WARMUP_MS DURATION_MS CLIENTS USERFILE
 *
 * USERFILE holds "name password" lines. From START_AT_MS (epoch ms) CLIENTS
 * clients each loop: take a user no other client holds, connect to
 * 127.0.0.1:PORT, read the greeting, USER, PASS, STAT, QUIT (each waiting for
 * its reply, every reply must start with +OK), wait for the server to close,
 * give the user back. Sessions that end inside the window [START+WARMUP,
 * START+WARMUP+DURATION] count; latency is connect() to the QUIT reply.
 * Prints one JSON object shaped like load.ts's SessionsResult.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "loadgen.h"

enum { MAX_USERS = 4096, MAX_CLIENTS = 1024, BUF = 4096 };

struct user { char name[128]; char pass[128]; };

struct client {
  int fd;
  int step;        /* replies received: 0 greeting, 1 USER, 2 PASS, 3 STAT, 4 QUIT; 5 = waiting for close */
  int user;
  double t0;       /* monotonic ms at connect() */
  double latency;  /* ms, once the QUIT reply is in */
  size_t len;
  char buf[BUF];
};

static struct user users[MAX_USERS];
static int free_users[MAX_USERS], free_head, free_count, nusers;
static struct client clients[MAX_CLIENTS];
static int port, epfd;
static long sessions;
static double *lat;
static size_t nlat, caplat;

static int take_user(void) { int u = free_users[free_head]; free_head = (free_head + 1) % nusers; free_count--; return u; }
static void give_user(int u) { free_users[(free_head + free_count) % nusers] = u; free_count++; }

static void error_note(const char *what) { error_count(what, 0); }

static void start_session(struct client *c);

static void end_session(struct client *c, const char *err) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  if (err != NULL) error_note(err);
  else if (in_window()) {
    sessions++;
    if (nlat == caplat) { caplat = caplat ? caplat * 2 : 65536; lat = realloc(lat, caplat * sizeof *lat); }
    lat[nlat++] = c->latency;
  }
  give_user(c->user);
  if (now_real() < t_end) start_session(c);
}

static void start_session(struct client *c) {
  c->user = take_user();
  c->step = 0;
  c->len = 0;
  c->t0 = now_mono();
  c->fd = connect_loopback(epfd, port, c);
  if (c->fd < 0) {
    /* Counted, then retried by the main loop after a pause (a failing server must not be spun on). */
    error_note(strerror(-c->fd));
    c->fd = -1;
    give_user(c->user);
  }
}

static void send_line(struct client *c, const char *fmt, const char *arg) {
  char out[300];
  int n = snprintf(out, sizeof out, fmt, arg);
  if (write(c->fd, out, (size_t)n) != n) end_session(c, "short write");
}

static void on_readable(struct client *c) {
  for (;;) {
    ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
    if (r < 0) {
      if (errno == EAGAIN) return;
      end_session(c, strerror(errno));
      return;
    }
    if (r == 0) {
      /* The server closed: the end of a good session, or an error before QUIT's reply. */
      end_session(c, c->step == 5 ? NULL : "connection closed early");
      return;
    }
    c->len += (size_t)r;
    char *line;
    while (c->step < 5 && (line = memmem(c->buf, c->len, "\r\n", 2)) != NULL) {
      size_t l = (size_t)(line - c->buf);
      if (l < 3 || memcmp(c->buf, "+OK", 3) != 0) {
        static const char *names[] = { "greeting", "USER", "PASS", "STAT", "QUIT" };
        char what[160];
        snprintf(what, sizeof what, "%s: %.*s", names[c->step], (int)(l > 100 ? 100 : l), c->buf);
        end_session(c, what);
        return;
      }
      memmove(c->buf, c->buf + l + 2, c->len - l - 2);
      c->len -= l + 2;
      struct user *u = &users[c->user];
      switch (c->step++) {
        case 0: send_line(c, "USER %s\r\n", u->name); break;
        case 1: send_line(c, "PASS %s\r\n", u->pass); break;
        case 2: send_line(c, "STAT\r\n%s", ""); break;
        case 3: send_line(c, "QUIT\r\n%s", ""); break;
        case 4: c->latency = now_mono() - c->t0; c->step = 5; break;
      }
      if (c->fd < 0) return;
    }
    if (c->len == BUF) { end_session(c, "reply line too long"); return; }
  }
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

int main(int argc, char **argv) {
  if (argc != 7) { fprintf(stderr, "usage: sessload PORT START_AT_MS WARMUP_MS DURATION_MS CLIENTS USERFILE\n"); return 64; }
  port = atoi(argv[1]);
  double start = atof(argv[2]);
  t_warm = start + atof(argv[3]);
  t_end = t_warm + atof(argv[4]);
  int nclients = atoi(argv[5]);
  FILE *f = fopen(argv[6], "r");
  if (f == NULL) { perror(argv[6]); return 66; }
  while (nusers < MAX_USERS && fscanf(f, "%127s %127s", users[nusers].name, users[nusers].pass) == 2) { free_users[nusers] = nusers; nusers++; }
  fclose(f);
  free_count = nusers;
  if (nclients < 1 || nclients > MAX_CLIENTS || nclients > nusers) { fprintf(stderr, "sessload: %d clients need at least as many users (%d)\n", nclients, nusers); return 64; }

  epfd = epoll_create1(0);
  sleep_until(start);
  for (int i = 0; i < nclients; i++) { clients[i].fd = -1; start_session(&clients[i]); }

  struct window_cpu w = {0};
  struct epoll_event evs[256];
  for (;;) {
    double n = now_real();
    window_tick(&w);
    int busy = 0;
    for (int i = 0; i < nclients; i++) {
      if (clients[i].fd >= 0) busy = 1;
      else if (n < t_end) { usleep(10000); start_session(&clients[i]); busy = 1; } /* after a failed connect */
    }
    if (!busy) break;
    int k = epoll_wait(epfd, evs, 256, 10);
    for (int i = 0; i < k; i++) {
      struct client *c = evs[i].data.ptr;
      if (c->fd >= 0) on_readable(c);
    }
  }
  window_finish(&w);

  printf("{\"kind\":\"sessions\",\"sessions\":%ld,\"errors\":%ld,", sessions, errors);
  print_samples();
  printf(",\"latenciesUs\":[");
  qsort(lat, nlat, sizeof *lat, cmp);
  for (size_t i = 0; i < nlat; i++) printf("%s%.0f", i ? "," : "", lat[i] * 1000);
  printf("],");
  print_cpu(&w);
  return 0;
}
