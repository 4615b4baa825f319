/*
 * qspan-load: the lab guest's block workload, and the ground truth that
 * qspan's host-side spans are checked against.
 *
 * It drives a block device with O_DIRECT reads or writes from --qd threads
 * (so --qd requests are in flight), optionally rate-limited, for a request
 * count or a duration, then re-reads every block it wrote and checks the
 * pattern. It measures each request's latency inside the guest and prints
 * one summary line (and, with --log, one line per request) on stdout:
 *
 *   QSPAN-LOAD done op=write requests=2000 verify_reads=2000 verify=ok ...
 *   QSPAN-REQ write <offset> <latency_ns> <start_ns>
 *
 * start_ns is when the request was issued, on the guest's CLOCK_MONOTONIC: set
 * against the host's kick of each request it gives the guest clock's rate and
 * jitter against the host's in the same run (tests/e2e/test_e2e.py).
 *
 * Thread regions are disjoint and separated by a gap block, so two requests
 * in flight are never contiguous and QEMU cannot merge them: one guest
 * request is one host request.
 *
 * Built static (lab/guest/build.sh) so the initramfs needs no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define MAGIC 0x7173706e6c6f6164ULL /* "qspnload" */

struct options {
    const char *dev;
    int write;
    size_t bs;
    int qd;
    long count;        /* total requests; 0 = use duration */
    double duration_s; /* used when count == 0 */
    double rate;       /* total requests per second; 0 = as fast as possible */
    int verify;
    int log;
    uint64_t seed;
};

struct req_record {
    uint64_t offset;
    uint64_t lat_ns;
    uint64_t start_ns;
};

struct worker {
    pthread_t thread;
    int index;
    const struct options *opt;
    int fd;
    uint64_t region_start; /* in blocks */
    uint64_t region_blocks;
    long quota; /* requests to issue; -1 = until deadline */
    uint64_t deadline_ns;
    struct req_record *records;
    long nrecords, cap;
    uint32_t *generation; /* last generation written per block of the region, 0 = never */
    long errors;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void fill_pattern(uint64_t *buf, size_t bs, uint64_t offset, uint32_t gen)
{
    for (size_t i = 0; i < bs / 8; i += 4) {
        buf[i] = MAGIC;
        buf[i + 1] = offset;
        buf[i + 2] = gen;
        buf[i + 3] = i;
    }
}

static int check_pattern(const uint64_t *buf, size_t bs, uint64_t offset, uint32_t gen)
{
    for (size_t i = 0; i < bs / 8; i += 4) {
        if (buf[i] != MAGIC || buf[i + 1] != offset || buf[i + 2] != gen || buf[i + 3] != i)
            return -1;
    }
    return 0;
}

static void record(struct worker *w, uint64_t offset, uint64_t lat, uint64_t start)
{
    if (w->nrecords == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 4096;
        w->records = realloc(w->records, w->cap * sizeof(*w->records));
        if (!w->records) {
            perror("realloc");
            exit(2);
        }
    }
    w->records[w->nrecords].offset = offset;
    w->records[w->nrecords].lat_ns = lat;
    w->records[w->nrecords].start_ns = start;
    w->nrecords++;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    const struct options *opt = w->opt;
    void *buf;
    if (posix_memalign(&buf, 4096, opt->bs)) {
        perror("posix_memalign");
        exit(2);
    }
    memset(buf, 0, opt->bs);
    uint64_t interval_ns = opt->rate > 0 ? (uint64_t)(1e9 * opt->qd / opt->rate) : 0;
    uint64_t next = now_ns();
    uint64_t block = 0;
    uint32_t gen = 1;
    for (long n = 0; w->quota < 0 || n < w->quota; n++) {
        if (interval_ns) {
            struct timespec ts = {.tv_sec = next / 1000000000ULL, .tv_nsec = next % 1000000000ULL};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            next += interval_ns;
        }
        if (w->quota < 0 && now_ns() >= w->deadline_ns)
            break;
        uint64_t offset = (w->region_start + block) * opt->bs;
        ssize_t done;
        uint64_t t0, t1;
        if (opt->write) {
            fill_pattern(buf, opt->bs, offset, gen);
            t0 = now_ns();
            done = pwrite(w->fd, buf, opt->bs, offset);
            t1 = now_ns();
            if (done == (ssize_t)opt->bs)
                w->generation[block] = gen;
        } else {
            t0 = now_ns();
            done = pread(w->fd, buf, opt->bs, offset);
            t1 = now_ns();
        }
        if (done != (ssize_t)opt->bs) {
            fprintf(stderr, "qspan-load: %s at %" PRIu64 ": %s\n", opt->write ? "pwrite" : "pread", offset,
                    done < 0 ? strerror(errno) : "short transfer");
            w->errors++;
        }
        record(w, offset, t1 - t0, t0);
        if (++block == w->region_blocks) {
            block = 0;
            gen++;
        }
    }
    free(buf);
    return NULL;
}

/* Re-read every block this worker wrote and compare with its last pattern. */
static long verify_worker(struct worker *w, long *reads)
{
    const struct options *opt = w->opt;
    void *buf;
    long bad = 0;
    if (posix_memalign(&buf, 4096, opt->bs)) {
        perror("posix_memalign");
        exit(2);
    }
    for (uint64_t b = 0; b < w->region_blocks; b++) {
        if (!w->generation[b])
            continue;
        uint64_t offset = (w->region_start + b) * opt->bs;
        (*reads)++;
        if (pread(w->fd, buf, opt->bs, offset) != (ssize_t)opt->bs ||
            check_pattern(buf, opt->bs, offset, w->generation[b])) {
            if (bad < 5)
                fprintf(stderr, "qspan-load: verify failed at offset %" PRIu64 "\n", offset);
            bad++;
        }
    }
    free(buf);
    return bad;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *sorted, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p / 100.0 * (n - 1) + 0.5);
    return sorted[i] / 1000.0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: qspan-load [--dev /dev/vda] [--op write|read] [--bs BYTES] [--qd N]\n"
            "                  [--count N | --duration SECONDS] [--rate IOPS] [--verify] [--log]\n"
            "Drives O_DIRECT I/O from N threads and prints guest-side latency percentiles.\n");
}

int main(int argc, char **argv)
{
    struct options opt = {.dev = "/dev/vda", .write = 1, .bs = 4096, .qd = 4, .count = 1000};
    static const struct option longopts[] = {
        {"dev", required_argument, 0, 'd'},      {"op", required_argument, 0, 'o'},
        {"bs", required_argument, 0, 'b'},       {"qd", required_argument, 0, 'q'},
        {"count", required_argument, 0, 'c'},    {"duration", required_argument, 0, 't'},
        {"rate", required_argument, 0, 'r'},     {"verify", no_argument, 0, 'v'},
        {"log", no_argument, 0, 'l'},            {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': opt.dev = optarg; break;
        case 'o':
            if (!strcmp(optarg, "write")) opt.write = 1;
            else if (!strcmp(optarg, "read")) opt.write = 0;
            else { usage(); return 2; }
            break;
        case 'b': opt.bs = strtoul(optarg, NULL, 0); break;
        case 'q': opt.qd = atoi(optarg); break;
        case 'c': opt.count = atol(optarg); break;
        case 't': opt.duration_s = atof(optarg); opt.count = 0; break;
        case 'r': opt.rate = atof(optarg); break;
        case 'v': opt.verify = 1; break;
        case 'l': opt.log = 1; break;
        default: usage(); return c == 'h' ? 0 : 2;
        }
    }
    if (opt.bs < 512 || opt.bs % 512 || opt.qd < 1 || opt.qd > 256 || (opt.count <= 0 && opt.duration_s <= 0)) {
        usage();
        return 2;
    }
    int fd = open(opt.dev, (opt.write ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        fprintf(stderr, "qspan-load: open %s: %s\n", opt.dev, strerror(errno));
        return 2;
    }
    uint64_t dev_bytes = 0;
    if (ioctl(fd, BLKGETSIZE64, &dev_bytes) < 0) {
        perror("BLKGETSIZE64");
        return 2;
    }
    uint64_t total_blocks = dev_bytes / opt.bs;
    uint64_t region_blocks = total_blocks / opt.qd;
    if (region_blocks < 2) {
        fprintf(stderr, "qspan-load: device too small for qd=%d\n", opt.qd);
        return 2;
    }
    region_blocks -= 1; /* leave a gap block between regions: no two requests are contiguous */

    struct worker *workers = calloc(opt.qd, sizeof(*workers));
    uint64_t start = now_ns();
    for (int i = 0; i < opt.qd; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        w->opt = &opt;
        w->fd = fd;
        w->region_start = i * (region_blocks + 1);
        w->region_blocks = region_blocks;
        w->quota = opt.count ? opt.count / opt.qd + (i < opt.count % opt.qd) : -1;
        w->deadline_ns = start + (uint64_t)(opt.duration_s * 1e9);
        w->generation = calloc(region_blocks, sizeof(uint32_t));
        pthread_create(&w->thread, NULL, worker_main, w);
    }
    long requests = 0, errors = 0;
    for (int i = 0; i < opt.qd; i++) {
        pthread_join(workers[i].thread, NULL);
        requests += workers[i].nrecords;
        errors += workers[i].errors;
    }
    uint64_t elapsed = now_ns() - start;

    long verify_reads = 0, bad = 0;
    if (opt.verify && opt.write)
        for (int i = 0; i < opt.qd; i++)
            bad += verify_worker(&workers[i], &verify_reads);

    uint64_t *lat = malloc((requests ? requests : 1) * sizeof(uint64_t));
    long k = 0;
    for (int i = 0; i < opt.qd; i++)
        for (long j = 0; j < workers[i].nrecords; j++)
            lat[k++] = workers[i].records[j].lat_ns;
    qsort(lat, requests, sizeof(uint64_t), cmp_u64);
    if (opt.log)
        for (int i = 0; i < opt.qd; i++)
            for (long j = 0; j < workers[i].nrecords; j++)
                printf("QSPAN-REQ %s %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", opt.write ? "write" : "read",
                       workers[i].records[j].offset, workers[i].records[j].lat_ns, workers[i].records[j].start_ns);
    printf("QSPAN-LOAD done op=%s bs=%zu qd=%d requests=%ld errors=%ld verify_reads=%ld verify=%s "
           "p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f min_us=%.1f iops=%.0f\n",
           opt.write ? "write" : "read", opt.bs, opt.qd, requests, errors, verify_reads,
           !(opt.verify && opt.write) ? "skipped" : bad ? "FAILED" : "ok", pct_us(lat, requests, 50),
           pct_us(lat, requests, 90), pct_us(lat, requests, 99), requests ? lat[requests - 1] / 1000.0 : 0,
           requests ? lat[0] / 1000.0 : 0, requests * 1e9 / (double)elapsed);
    fflush(stdout);
    return errors || bad ? 1 : 0;
}
