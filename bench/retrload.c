/*
 * The RETR load generator, compiled (bench/run.ts builds it with cc into
 * bench/.work/, like sessload.c, and falls back to the Node one in
 * bench/load.ts when there is no compiler). It does what load.ts's runRetr
 * does, with less of the CPU the servers are measured on: the Node client's
 * CPU per MB received had grown larger than the faster server's own.
 *
 *   retrload PORT START_AT_MS WARMUP_MS DURATION_MS WINDOW CLIENTFILE
 *
 * CLIENTFILE has one line per client: "name password n e1 ... en", where ei
 * is the exact number of body bytes (CRLF, dot-stuffed, without the final
 * ".\r\n") that RETR i must return. From START_AT_MS (epoch ms) each client
 * loops: connect to 127.0.0.1:PORT, greeting, USER, PASS, then RETR 1..n with
 * WINDOW commands in flight (no new RETR after the window ends), QUIT, wait
 * for the server to close. Every reply must start with +OK. The end of a body
 * is found by scanning for CRLF "." CRLF (a dot-stuffed body cannot contain
 * it), and its length is compared with the expected one.
 *
 * Counted inside [START+WARMUP, START+WARMUP+DURATION]: every byte received,
 * the RETR replies completed and the sessions that ended. Prints one JSON
 * object shaped like load.ts's RetrResult.
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

enum { MAX_CLIENTS = 256, MAX_MSGS = 65536, LINE = 1024, RBUF = 1 << 20 };

enum phase { GREETING, USER, PASS, RETR, QUIT, CLOSING };

struct client {
  char name[128], pass[128];
  long *expected;
  int nmsgs;
  int fd;
  enum phase phase;
  int next;           /* next message number to request */
  int head, inflight; /* oldest message number in flight, and how many */
  int quit_sent;
  int in_body;
  int match;          /* bytes of "\r\n.\r\n" that the body seen so far ends with */
  long body;          /* body bytes so far, terminator included */
  size_t llen;        /* partial status line */
  char line[LINE];
};

static struct client clients[MAX_CLIENTS];
static int nclients, port, window_size, epfd;
static long long bytes;
static long messages, sessions, mismatches;
static char rbuf[RBUF];

/* Every error counts, inside the window or not (as in load.ts's RETR loop). */
static void error_note(const char *what) { error_count(what, 1); }

static void start_session(struct client *c);

static void end_session(struct client *c, const char *err) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  if (err != NULL) error_note(err);
  else if (in_window()) sessions++;
  if (now_real() < t_end) start_session(c);
}

static void start_session(struct client *c) {
  c->phase = GREETING;
  c->next = 1;
  c->head = 1;
  c->inflight = 0;
  c->quit_sent = 0;
  c->in_body = 0;
  c->llen = 0;
  c->fd = connect_loopback(epfd, port, c);
  if (c->fd < 0) {
    /* Counted, then retried by the main loop after a pause (a failing server must not be spun on). */
    error_note(strerror(-c->fd));
    c->fd = -1;
  }
}

static int send_str(struct client *c, const char *s, size_t n) {
  if (write(c->fd, s, n) != (ssize_t)n) {
    end_session(c, "short write");
    return 0;
  }
  return 1;
}

/* RETR up to the window, in one write; QUIT when nothing is in flight and nothing more will be asked. */
static int fill(struct client *c) {
  char out[4096];
  size_t o = 0;
  while (c->inflight < window_size && c->next <= c->nmsgs && now_real() < t_end && o < sizeof out - 32) {
    o += (size_t)snprintf(out + o, sizeof out - o, "RETR %d\r\n", c->next++);
    c->inflight++;
  }
  if (c->inflight == 0 && !c->quit_sent) {
    c->quit_sent = 1;
    c->phase = QUIT;
    o += (size_t)snprintf(out + o, sizeof out - o, "QUIT\r\n");
  }
  return o == 0 || send_str(c, out, o);
}

static void body_done(struct client *c) {
  const int msg = c->head++;
  c->inflight--;
  const long got = c->body - 3;
  if (got != c->expected[msg - 1]) {
    char what[200];
    snprintf(what, sizeof what, "RETR %d: %ld body bytes, expected %ld", msg, got, c->expected[msg - 1]);
    mismatches++;
    error_note(what);
  }
  if (in_window()) messages++;
}

/* Scan body bytes for "\r\n.\r\n" (match carries a partial one across reads); returns bytes used. */
static size_t scan_body(struct client *c, const char *p, size_t len) {
  size_t i = 0;
  while (i < len) {
    if (c->match != 0) {
      const char ch = p[i++];
      switch (c->match) {
        case 1: c->match = ch == '\n' ? 2 : ch == '\r' ? 1 : 0; break;
        case 2: c->match = ch == '.' ? 3 : ch == '\r' ? 1 : 0; break;
        case 3: c->match = ch == '\r' ? 4 : 0; break;
        case 4: c->match = ch == '\n' ? 5 : ch == '\r' ? 1 : 0; break;
      }
      if (c->match == 5) {
        c->body += (long)i;
        c->match = 0;
        c->in_body = 0;
        return i;
      }
      continue;
    }
    /* No partial match: the next possible terminator starts two bytes before a dot. */
    const char *dot = memchr(p + i, '.', len - i);
    if (dot == NULL) {
      if (len - i >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n') c->match = 2;
      else if (p[len - 1] == '\r') c->match = 1;
      i = len;
      break;
    }
    const size_t d = (size_t)(dot - p);
    c->match = d - i >= 2 && p[d - 2] == '\r' && p[d - 1] == '\n' ? 3 : 0;
    i = d + 1;
  }
  c->body += (long)len;
  return len;
}

/* One status line (without CRLF). Returns 0 if the session ended. */
static int on_status(struct client *c, const char *line, size_t l) {
  if (l < 3 || memcmp(line, "+OK", 3) != 0) {
    static const char *names[] = { "greeting", "USER", "PASS", "RETR", "QUIT", "after QUIT" };
    char what[200];
    snprintf(what, sizeof what, "%s: %.*s", names[c->phase], (int)(l > 100 ? 100 : l), line);
    end_session(c, what);
    return 0;
  }
  char out[300];
  switch (c->phase) {
    case GREETING:
      c->phase = USER;
      return send_str(c, out, (size_t)snprintf(out, sizeof out, "USER %s\r\n", c->name));
    case USER:
      c->phase = PASS;
      return send_str(c, out, (size_t)snprintf(out, sizeof out, "PASS %s\r\n", c->pass));
    case PASS:
      c->phase = RETR;
      return fill(c);
    case RETR:
      if (c->inflight == 0) { end_session(c, "RETR: a reply nobody asked for"); return 0; }
      c->in_body = 1;
      c->match = 2; /* the status line's CRLF may begin the terminator (an empty body) */
      c->body = 0;
      return 1;
    case QUIT:
      c->phase = CLOSING;
      return 1;
    case CLOSING:
      end_session(c, "a reply after QUIT");
      return 0;
  }
  return 1;
}

static void on_readable(struct client *c) {
  for (;;) {
    ssize_t r = read(c->fd, rbuf, RBUF);
    if (r < 0) {
      if (errno == EAGAIN) return;
      end_session(c, strerror(errno));
      return;
    }
    if (r == 0) {
      end_session(c, c->phase == CLOSING ? NULL : "connection closed early");
      return;
    }
    if (in_window()) bytes += r;
    const char *p = rbuf;
    size_t len = (size_t)r;
    while (len > 0) {
      if (c->in_body) {
        const size_t used = scan_body(c, p, len);
        p += used;
        len -= used;
        if (!c->in_body) {
          body_done(c);
          if (!fill(c)) return;
        }
        continue;
      }
      const char *nl = memchr(p, '\n', len);
      const size_t take = nl ? (size_t)(nl - p) + 1 : len;
      if (c->llen + take > LINE) { end_session(c, "status line too long"); return; }
      memcpy(c->line + c->llen, p, take);
      c->llen += take;
      p += take;
      len -= take;
      if (nl == NULL) break;
      size_t l = c->llen - 1;
      if (l > 0 && c->line[l - 1] == '\r') l--;
      c->llen = 0;
      if (!on_status(c, c->line, l)) return;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 7) { fprintf(stderr, "usage: retrload PORT START_AT_MS WARMUP_MS DURATION_MS WINDOW CLIENTFILE\n"); return 64; }
  port = atoi(argv[1]);
  const double start = atof(argv[2]);
  t_warm = start + atof(argv[3]);
  t_end = t_warm + atof(argv[4]);
  window_size = atoi(argv[5]);
  FILE *f = fopen(argv[6], "r");
  if (f == NULL) { perror(argv[6]); return 66; }
  while (nclients < MAX_CLIENTS) {
    struct client *c = &clients[nclients];
    if (fscanf(f, "%127s %127s %d", c->name, c->pass, &c->nmsgs) != 3) break;
    if (c->nmsgs < 1 || c->nmsgs > MAX_MSGS) { fprintf(stderr, "retrload: %s: bad message count\n", c->name); return 65; }
    c->expected = calloc((size_t)c->nmsgs, sizeof *c->expected);
    for (int i = 0; i < c->nmsgs; i++) if (fscanf(f, "%ld", &c->expected[i]) != 1) { fprintf(stderr, "retrload: %s: short line\n", c->name); return 65; }
    nclients++;
  }
  fclose(f);
  if (nclients == 0 || window_size < 1) { fprintf(stderr, "retrload: no clients, or a window below 1\n"); return 64; }

  epfd = epoll_create1(0);
  sleep_until(start);
  for (int i = 0; i < nclients; i++) { clients[i].fd = -1; start_session(&clients[i]); }

  struct window_cpu w = {0};
  struct epoll_event evs[MAX_CLIENTS];
  for (;;) {
    const double n = now_real();
    window_tick(&w);
    int busy = 0;
    for (int i = 0; i < nclients; i++) {
      if (clients[i].fd >= 0) busy = 1;
      else if (n < t_end) { usleep(10000); start_session(&clients[i]); busy = 1; } /* after a failed connect */
    }
    if (!busy) break;
    const int k = epoll_wait(epfd, evs, MAX_CLIENTS, 10);
    for (int i = 0; i < k; i++) {
      struct client *c = evs[i].data.ptr;
      if (c->fd >= 0) on_readable(c);
    }
  }
  window_finish(&w);

  printf("{\"kind\":\"retr\",\"bytes\":%lld,\"messages\":%ld,\"sessions\":%ld,\"errors\":%ld,\"mismatches\":%ld,", bytes, messages, sessions, errors, mismatches);
  print_samples();
  printf(",");
  print_cpu(&w);
  return 0;
}
