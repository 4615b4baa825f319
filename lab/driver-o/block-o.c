/*
 * Driver "o": the seed scenario's interposing block driver, for the qspan lab.
 *
 * On a guest write O copies the data, hands the copy to its replica thread
 * (standing in for a transport library that writes to a fast device), starts
 * the write to its child B in a new coroutine that the guest does not wait
 * for, and yields. The replica thread writes the copy to a file (tmpfs) after
 * a configurable delay and calls aio_co_schedule() to re-enter the waiting
 * coroutine in the iothread, which acknowledges the write to the guest. B's
 * completion frees the copy.
 *
 * Knobs (-drive options):
 *   replica=PATH          replica file (default: no file, the copy is only timed)
 *   replica-delay-us=N    the fast device's latency, measured from submission
 *   b-cpu-us=N            CPU time B's coroutine spends on the iothread per write
 *   mitigation=on|off     keep B's work from running ahead of acks (see below)
 *   timing=PATH           each write's replica submission and callback times, written
 *                         there when O closes (the seed tests' ground truth)
 *
 * Mitigation ("ack first"): B's write is not started when the guest write is
 * submitted but when its ack has been given, and B's CPU work runs in slices
 * of at most MITIGATION_SLICE_US, re-queued with aio_co_schedule() between
 * slices, so an ack scheduled by the replica thread in the meantime runs
 * after at most one slice instead of after all of B's queued work.
 *
 * Correctness: B writes that overlap an earlier in-flight B write wait for it
 * (writes land in order); reads that overlap an in-flight B write wait for it
 * (reads see the latest data); every background write holds the node's
 * in-flight counter, so drain and flush wait for them.
 *
 * It is built against the headers of the exact Debian QEMU source package
 * (lab/driver-o/build.sh) and LD_PRELOADed into QEMU; it refuses to load into
 * any other QEMU build (GNU build-id check) with a clear message.
 *
 * USDT probes (provider "o"): write_start(offset, bytes), replica_submit(offset,
 * bytes, req), replica_cb(offset, bytes, req, co), ack(offset, bytes),
 * backing_submit(offset, bytes, co), backing_done(offset, bytes).
 */
#include "qemu/osdep.h"
#include "block/block_int.h"
#include "qapi/error.h"
#include "qemu/coroutine.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/queue.h"
#include "qemu/memalign.h"

#include <link.h>
#include <sys/prctl.h>
#include <sys/sdt.h>

#ifndef QSPAN_EXPECTED_BUILD_ID
#error "build with -DQSPAN_EXPECTED_BUILD_ID=\"<build-id of qemu-system-x86_64>\" (lab/driver-o/build.sh)"
#endif

#ifndef NT_GNU_BUILD_ID
#define NT_GNU_BUILD_ID 3 /* QEMU's own elf.h shadows the system's and lacks it */
#endif

#define MITIGATION_SLICE_US 25

typedef struct OReq OReq;

/* Ground truth for the tests (timing=PATH): per write, when O handed it to the replica
 * thread and when that thread called back, CLOCK_MONOTONIC ns as bpftrace's clock, kept in
 * memory by the replica thread (no I/O on its path) and written when O closes. */
typedef struct OTiming {
    int64_t offset;
    uint64_t submit_ns;
    uint64_t callback_ns;
} OTiming;
#define O_TIMINGS_MAX 65536

typedef struct BDRVOState {
    int replica_fd;
    uint64_t replica_delay_ns;
    uint64_t b_cpu_ns;
    bool mitigation;

    /* replica thread: a FIFO of copies to replicate */
    QemuThread thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    QSIMPLEQ_HEAD(, OReq) replica_queue;
    bool stopping;
    char *timing_path;
    OTiming *timings; /* the replica thread's alone until it is joined */
    size_t n_timings;

    /* background B writes in flight (iothread only), and who waits on them */
    QTAILQ_HEAD(, OReq) b_inflight; /* in submission order */
    CoQueue b_waiters;
} BDRVOState;

struct OReq {
    BlockDriverState *bs;
    int64_t offset;
    int64_t bytes;
    void *buf;
    uint64_t submit_ns;
    Coroutine *co; /* the guest write's coroutine, re-entered by the replica callback */
    AioContext *ctx;
    int replica_ret;
    int refs; /* the write coroutine's, the replica thread's and B's; atomic */
    bool in_b; /* on b_inflight */
    QSIMPLEQ_ENTRY(OReq) next_replica;
    QTAILQ_ENTRY(OReq) next_b;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void oreq_unref(OReq *r)
{
    if (qatomic_fetch_dec(&r->refs) == 1) {
        qemu_vfree(r->buf);
        g_free(r);
    }
}

static bool overlaps(const OReq *r, int64_t offset, int64_t bytes)
{
    return r->offset < offset + bytes && offset < r->offset + r->bytes;
}

/* Wait until no in-flight B write older than `self` overlaps [offset, offset+bytes). */
static void coroutine_fn wait_for_overlapping_b(BDRVOState *s, OReq *self, int64_t offset, int64_t bytes)
{
    for (;;) {
        OReq *r;
        bool busy = false;
        QTAILQ_FOREACH(r, &s->b_inflight, next_b) {
            if (r == self) {
                break; /* only older writes count */
            }
            if (overlaps(r, offset, bytes)) {
                busy = true;
                break;
            }
        }
        if (!busy) {
            return;
        }
        qemu_co_queue_wait(&s->b_waiters, NULL);
    }
}

/* B's own CPU work on the iothread (a stand-in for a costly backing driver). */
static void coroutine_fn b_burn_cpu(BDRVOState *s, OReq *r)
{
    uint64_t left = s->b_cpu_ns;
    while (left) {
        uint64_t slice = s->mitigation ? MIN(left, MITIGATION_SLICE_US * 1000ULL) : left;
        uint64_t end = now_ns() + slice;
        while (now_ns() < end) {
            /* spin */
        }
        left -= slice;
        if (s->mitigation && left) {
            /* let coroutines scheduled meanwhile (acks) run before the next slice */
            aio_co_schedule(r->ctx, qemu_coroutine_self());
            qemu_coroutine_yield();
        }
    }
}

static void coroutine_fn o_backing_write_entry(void *opaque)
{
    OReq *r = opaque;
    BlockDriverState *bs = r->bs;
    BDRVOState *s = bs->opaque;
    QEMUIOVector qiov;

    wait_for_overlapping_b(s, r, r->offset, r->bytes);
    b_burn_cpu(s, r);
    qemu_iovec_init_buf(&qiov, r->buf, r->bytes);
    int ret = bdrv_co_pwritev(bs->file, r->offset, r->bytes, &qiov, 0);
    if (ret < 0) {
        fprintf(stderr, "o: backing write at %" PRId64 " failed: %s\n", r->offset, strerror(-ret));
    }
    DTRACE_PROBE2(o, backing_done, r->offset, r->bytes);
    QTAILQ_REMOVE(&s->b_inflight, r, next_b);
    r->in_b = false;
    qemu_co_queue_restart_all(&s->b_waiters);
    bdrv_dec_in_flight(bs);
    oreq_unref(r);
}

static void start_backing_write(OReq *r)
{
    BDRVOState *s = r->bs->opaque;
    Coroutine *co = qemu_coroutine_create(o_backing_write_entry, r);
    QTAILQ_INSERT_TAIL(&s->b_inflight, r, next_b);
    r->in_b = true;
    bdrv_inc_in_flight(r->bs);
    DTRACE_PROBE3(o, backing_submit, r->offset, r->bytes, co);
    /* Like bdrv_aio_writev from a coroutine: queued, it runs once the caller yields. */
    aio_co_enter(r->ctx, co);
}

static void *replica_thread(void *opaque)
{
    BDRVOState *s = opaque;
    prctl(PR_SET_TIMERSLACK, 1UL); /* the device latency model needs ~us timer precision */
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (QSIMPLEQ_EMPTY(&s->replica_queue) && !s->stopping) {
            pthread_cond_wait(&s->cond, &s->lock);
        }
        if (s->stopping && QSIMPLEQ_EMPTY(&s->replica_queue)) {
            break;
        }
        OReq *r = QSIMPLEQ_FIRST(&s->replica_queue);
        QSIMPLEQ_REMOVE_HEAD(&s->replica_queue, next_replica);
        pthread_mutex_unlock(&s->lock);

        /* the fast device completes replica-delay-us after submission */
        uint64_t due = r->submit_ns + s->replica_delay_ns;
        struct timespec ts = {.tv_sec = due / 1000000000ULL, .tv_nsec = due % 1000000000ULL};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        r->replica_ret = 0;
        if (s->replica_fd >= 0 && pwrite(s->replica_fd, r->buf, r->bytes, r->offset) != r->bytes) {
            r->replica_ret = -EIO;
        }
        Coroutine *co = r->co;
        AioContext *ctx = r->ctx;
        if (s->timings && s->n_timings < O_TIMINGS_MAX) {
            s->timings[s->n_timings++] = (OTiming){r->offset, r->submit_ns, now_ns()};
        }
        DTRACE_PROBE4(o, replica_cb, r->offset, r->bytes, r, co);
        oreq_unref(r); /* may free r when B already finished; co and ctx were copied */
        aio_co_schedule(ctx, co);

        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static int coroutine_fn o_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                     QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVOState *s = bs->opaque;
    DTRACE_PROBE2(o, write_start, offset, bytes);

    OReq *r = g_new0(OReq, 1);
    r->bs = bs;
    r->offset = offset;
    r->bytes = bytes;
    r->buf = qemu_blockalign(bs, bytes);
    qemu_iovec_to_buf(qiov, 0, r->buf, bytes);
    r->co = qemu_coroutine_self();
    r->ctx = bdrv_get_aio_context(bs);
    r->refs = 3;

    pthread_mutex_lock(&s->lock);
    QSIMPLEQ_INSERT_TAIL(&s->replica_queue, r, next_replica);
    DTRACE_PROBE3(o, replica_submit, offset, bytes, r);
    r->submit_ns = now_ns(); /* after the probe: the replica phase it starts is never shorter than the delay */
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);

    int64_t ack_offset = offset, ack_bytes = bytes;
    if (!s->mitigation) {
        start_backing_write(r);
    }
    qemu_coroutine_yield(); /* until the replica callback schedules us */
    int ret = r->replica_ret;
    if (s->mitigation) {
        start_backing_write(r); /* ack first: B starts once this write is acknowledged */
    }
    oreq_unref(r); /* the replica thread and B may both be done with it already */
    DTRACE_PROBE2(o, ack, ack_offset, ack_bytes);
    return ret;
}

static int coroutine_fn o_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                    QEMUIOVector *qiov, BdrvRequestFlags flags)
{
    BDRVOState *s = bs->opaque;
    wait_for_overlapping_b(s, NULL, offset, bytes); /* B must hold the latest data first */
    return bdrv_co_preadv(bs->file, offset, bytes, qiov, flags);
}

static int coroutine_fn o_co_flush_to_os(BlockDriverState *bs)
{
    BDRVOState *s = bs->opaque;
    while (!QTAILQ_EMPTY(&s->b_inflight)) {
        qemu_co_queue_wait(&s->b_waiters, NULL);
    }
    return 0; /* the block layer then flushes B */
}

static int64_t o_getlength(BlockDriverState *bs)
{
    return bdrv_getlength(bs->file->bs);
}

static QemuOptsList o_runtime_opts = {
    .name = "o",
    .head = QTAILQ_HEAD_INITIALIZER(o_runtime_opts.head),
    .desc = {
        {.name = "replica", .type = QEMU_OPT_STRING, .help = "replica file"},
        {.name = "replica-delay-us", .type = QEMU_OPT_NUMBER, .help = "replica latency"},
        {.name = "b-cpu-us", .type = QEMU_OPT_NUMBER, .help = "B's CPU time per write"},
        {.name = "mitigation", .type = QEMU_OPT_BOOL, .help = "ack first, B in slices"},
        {.name = "timing", .type = QEMU_OPT_STRING, .help = "file for each write's replica times, written at close"},
        {/* end */}},
};

static int o_open(BlockDriverState *bs, QDict *options, int flags, Error **errp)
{
    BDRVOState *s = bs->opaque;
    QemuOpts *opts = qemu_opts_create(&o_runtime_opts, NULL, 0, &error_abort);
    if (!qemu_opts_absorb_qdict(opts, options, errp)) {
        qemu_opts_del(opts);
        return -EINVAL;
    }
    s->replica_delay_ns = qemu_opt_get_number(opts, "replica-delay-us", 20) * 1000;
    s->b_cpu_ns = qemu_opt_get_number(opts, "b-cpu-us", 0) * 1000;
    s->mitigation = qemu_opt_get_bool(opts, "mitigation", false);
    const char *timing = qemu_opt_get(opts, "timing");
    if (timing) {
        s->timing_path = g_strdup(timing);
        s->timings = g_new0(OTiming, O_TIMINGS_MAX);
    }
    const char *replica = qemu_opt_get(opts, "replica");
    s->replica_fd = -1;
    if (replica) {
        s->replica_fd = open(replica, O_RDWR | O_CREAT, 0600);
        if (s->replica_fd < 0) {
            error_setg_errno(errp, errno, "o: cannot open replica %s", replica);
            qemu_opts_del(opts);
            return -errno;
        }
    }
    qemu_opts_del(opts);

    bs->file = bdrv_open_child(NULL, options, "file", bs, &child_of_bds,
                               BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY, false, errp);
    if (!bs->file) {
        if (s->replica_fd >= 0) {
            close(s->replica_fd);
        }
        g_free(s->timing_path);
        g_free(s->timings);
        return -EINVAL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    QSIMPLEQ_INIT(&s->replica_queue);
    QTAILQ_INIT(&s->b_inflight);
    qemu_co_queue_init(&s->b_waiters);
    qemu_thread_create(&s->thread, "o-replica", replica_thread, s, QEMU_THREAD_JOINABLE);
    return 0;
}

static void o_close(BlockDriverState *bs)
{
    BDRVOState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    qemu_thread_join(&s->thread);
    if (s->replica_fd >= 0) {
        close(s->replica_fd);
    }
    if (s->timing_path) {
        /* "offset submit_ns callback_ns" per write; a file that cannot be written is reported, not fatal */
        FILE *f = fopen(s->timing_path, "w");
        for (size_t i = 0; f && i < s->n_timings; i++) {
            fprintf(f, "%" PRId64 " %" PRIu64 " %" PRIu64 "\n", s->timings[i].offset, s->timings[i].submit_ns,
                    s->timings[i].callback_ns);
        }
        if (!f || fclose(f) != 0) {
            fprintf(stderr, "o: cannot write timing file %s\n", s->timing_path);
        }
        g_free(s->timing_path);
        g_free(s->timings);
    }
}

static BlockDriver bdrv_o = {
    .format_name = "o",
    .instance_size = sizeof(BDRVOState),
    .bdrv_open = o_open,
    .bdrv_close = o_close,
    .bdrv_child_perm = bdrv_default_perms,
    .bdrv_co_preadv = o_co_preadv,
    .bdrv_co_pwritev = o_co_pwritev,
    .bdrv_co_flush_to_os = o_co_flush_to_os,
    .bdrv_getlength = o_getlength,
    .is_format = true,
};

static void bdrv_o_init(void)
{
    bdrv_register(&bdrv_o);
}

/* The build-id of the program this library was loaded into. */
static int find_build_id(struct dl_phdr_info *info, size_t size, void *data)
{
    char *out = data;
    if (info->dlpi_name && info->dlpi_name[0]) {
        return 0; /* only the main program (empty name) */
    }
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE) {
            continue;
        }
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *n = (const ElfW(Nhdr) *)p;
            const char *name = p + sizeof(*n);
            const unsigned char *desc = (const unsigned char *)name + ((n->n_namesz + 3) & ~3u);
            if (n->n_type == NT_GNU_BUILD_ID && n->n_namesz == 4 && !memcmp(name, "GNU", 4)) {
                for (unsigned j = 0; j < n->n_descsz && j < 64; j++) {
                    sprintf(out + 2 * j, "%02x", desc[j]);
                }
                return 1;
            }
            p = (const char *)desc + ((n->n_descsz + 3) & ~3u);
        }
    }
    return 1;
}

static void __attribute__((constructor)) o_register(void)
{
    char build_id[130] = "";
    dl_iterate_phdr(find_build_id, build_id);
    if (strcmp(build_id, QSPAN_EXPECTED_BUILD_ID) != 0) {
        fprintf(stderr,
                "qspan driver o: refusing to load: built for QEMU build-id %s, "
                "but this program's build-id is %s (rebuild lab/driver-o for this QEMU)\n",
                QSPAN_EXPECTED_BUILD_ID, build_id[0] ? build_id : "(none)");
        _exit(1);
    }
    register_module_init(bdrv_o_init, MODULE_INIT_BLOCK);
}
