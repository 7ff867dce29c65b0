/*
 * endpoint.c - endpoints and servers: they move records between sockets and sessions.
 * Sockets are non-blocking; a call that must wait releases the library lock and waits in
 * poll(2). Section numbers refer to docs/PROTOCOL.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRAME_CAP (SHMLINK_HEADER_SIZE + SHMLINK_DESC_SIZE * SHMLINK_MAX_REGIONS_MAX)

struct shmlink_endpoint {
    uint64_t id;
    int fd;
    bool ended;               /* the connection is over */
    shmlink_code ended_code;  /* why: SHMLINK_ERR_PEER_CLOSED after end-of-file, else other */
    bool closed_here;         /* shmlink_endpoint_close was called */
    session s;
    shmlink_endpoint_stats stats;
    uint8_t *rbuf; /* one record: the largest frame this side's limits allow, plus one byte */
    size_t rcap;
    int fds[SHMLINK_MAX_REGIONS_MAX];
    uint8_t frame[FRAME_CAP];
    uint8_t control[FRAME_CAP];
};

static uint64_t g_next_endpoint_id = 1;

/* ---- connection state ----------------------------------------------------------------- */

/* Ends the connection with `code`: the socket is shut down both ways (the peer reads
 * end-of-file) and both binding tables are dropped. */
static void end_locked(shmlink_endpoint *ep, shmlink_code code)
{
    if (ep->ended)
        return;
    ep->ended = true;
    ep->ended_code = code;
    sys_shutdown(ep->fd);
    session_end_locked(&ep->s, ep, code == SHMLINK_ERR_PEER_CLOSED);
}

/* What a call on an ended connection reports: PEER_CLOSED after end-of-file, else CLOSED. */
static shmlink_code closed_error(const shmlink_endpoint *ep, shmlink_error *err, const char *op)
{
    if (ep->ended_code == SHMLINK_ERR_PEER_CLOSED)
        return set_error(err, SHMLINK_ERR_PEER_CLOSED, op,
                         "the peer closed the connection; regions it sent stay valid until you "
                         "drop them");
    return set_error(err, SHMLINK_ERR_CLOSED, op, "the endpoint is closed; create or accept a new one");
}

static bool disconnected(int e) { return e == EPIPE || e == ECONNRESET || e == ENOTCONN; }

enum { FLUSHED = 0, FLUSH_WAIT = 1, FLUSH_FAILED = -1 };

/* Sends the frames the session has pending (HELLO, RELEASE) while the socket has room. */
static int flush_control_locked(shmlink_endpoint *ep, shmlink_error *err, const char *op)
{
    for (;;) {
        if (ep->ended)
            return FLUSHED;
        control_kind kind;
        size_t count;
        const size_t len = session_poll_control(&ep->s, ep->control, &kind, &count);
        if (len == 0)
            return FLUSHED;
        const int e = sys_send_record(ep->fd, ep->control, len, NULL, 0, NULL, 0);
        if (e == 0 || (kind == CONTROL_HELLO && disconnected(e))) {
            /* A peer already gone is reported by the first receive, after whatever it sent
             * before leaving (section 3 rule 4). */
            session_control_sent(&ep->s, kind, count);
            continue;
        }
        if (e == EAGAIN || e == EWOULDBLOCK)
            return FLUSH_WAIT;
        if (disconnected(e)) {
            end_locked(ep, SHMLINK_ERR_PEER_CLOSED);
            closed_error(ep, err, op);
        } else {
            end_locked(ep, SHMLINK_ERR_OS);
            set_sys_error(err, SHMLINK_ERR_OS, op, "sendmsg", e, "the connection was closed");
        }
        return FLUSH_FAILED;
    }
}

void endpoint_region_closed_locked(shmlink_endpoint *ep, shmlink_region *r)
{
    if (!session_release_locked(&ep->s, ep, r))
        region_remove_binder_locked(r, ep);
    (void)flush_control_locked(ep, NULL, "shmlink_region_close");
}

/* Waits for `events` with the lock released; false when the deadline passed. */
static bool wait_locked(shmlink_endpoint *ep, short events, int64_t deadline)
{
    const int left = remaining_ms(deadline);
    if (left == 0)
        return false;
    const int fd = ep->fd;
    shmlink_unlock();
    const bool ready = sys_wait(fd, events, left);
    shmlink_lock();
    return ready || remaining_ms(deadline) != 0;
}

/* Wraps a connected non-blocking socket and sends this side's HELLO. Takes fd. */
static shmlink_code endpoint_new_locked(int fd, const shmlink_limits *limits,
                                        bool accept_writable, uint64_t realm,
                                        shmlink_endpoint **out, shmlink_error *err, const char *op)
{
    *out = NULL;
    shmlink_endpoint *ep = calloc(1, sizeof *ep);
    if (ep == NULL) {
        close_fd(fd);
        return set_error(err, SHMLINK_ERR_OS, op, "out of memory");
    }
    ep->fd = fd;
    shmlink_error inner;
    shmlink_code code = session_init(&ep->s, limits, accept_writable, realm, &inner);
    if (code != SHMLINK_OK) {
        close_fd(fd);
        free(ep);
        return copy_error(err, &inner, op);
    }
    ep->id = g_next_endpoint_id++;
    ep->rcap = (size_t)SHMLINK_FRAME_SIZE(ep->s.limits.max_regions, ep->s.limits.max_payload) + 1;
    ep->rbuf = malloc(ep->rcap);
    if (ep->rbuf == NULL)
        code = set_error(&inner, SHMLINK_ERR_OS, op, "out of memory");
    /* Section 3 rule 1: this side's HELLO goes out at once. */
    else if (flush_control_locked(ep, &inner, op) == FLUSH_FAILED)
        code = inner.code;
    if (code != SHMLINK_OK) {
        session_destroy_locked(&ep->s, ep);
        close_fd(ep->fd);
        free(ep->rbuf);
        free(ep);
        return copy_error(err, &inner, op);
    }
    *out = ep;
    return SHMLINK_OK;
}

/* ---- receiving ------------------------------------------------------------------------ */

/* Reads and judges one record; IN_* in *kind. A failure ends the connection; a timeout
 * does not. The caller holds the lock. */
static shmlink_code read_one_locked(shmlink_endpoint *ep, shmlink_message *msg, int64_t deadline,
                                    inbound_kind *kind, shmlink_error *err, const char *op)
{
    for (;;) {
        if (ep->ended)
            return closed_error(ep, err, op);
        (void)flush_control_locked(ep, NULL, op);
        if (ep->ended)
            return closed_error(ep, err, op);
        size_t nfds = 0;
        received rec;
        if (sys_recv_record(ep->fd, ep->rbuf, ep->rcap, ep->s.limits.max_regions, ep->fds, &nfds,
                            &rec) != 0) {
            const int e = errno;
            if (e != EAGAIN && e != EWOULDBLOCK) {
                end_locked(ep, SHMLINK_ERR_OS);
                return set_sys_error(err, SHMLINK_ERR_OS, op, "recvmsg", e, "the connection was closed");
            }
            if (!wait_locked(ep, POLLIN, deadline))
                return set_error(err, SHMLINK_ERR_TIMED_OUT, op, "the timeout passed first");
            continue;
        }
        /* SYNC POINT: acquire (MEMORY-MODEL.md section 4). recvmsg returned: the peer's
         * writes before its send happen before this thread's reads from here on. */
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        shmlink_error inner;
        const shmlink_code code = session_handle_locked(&ep->s, ep, ep->rbuf, &rec, ep->fds, nfds,
                                                        kind, msg, &inner);
        if (code != SHMLINK_OK) {
            end_locked(ep, code);
            return copy_error(err, &inner, op);
        }
        switch (*kind) {
        case IN_HANDSHAKE:
            (void)flush_control_locked(ep, NULL, op); /* RELEASEs waited for the peer's limits */
            return SHMLINK_OK;
        case IN_EOF:
            end_locked(ep, SHMLINK_ERR_PEER_CLOSED);
            return closed_error(ep, err, op);
        case IN_MESSAGE:
            ep->stats.messages_in++;
            ep->stats.bytes_in += msg->payload_len;
            return SHMLINK_OK;
        case IN_RELEASED:
            return SHMLINK_OK;
        }
    }
}

static void message_drop_regions_locked(shmlink_message *msg)
{
    for (size_t i = 0; i < msg->region_count; i++)
        region_unref_locked(msg->regions[i]);
    msg->region_count = 0;
    msg->payload_len = 0;
}

shmlink_code shmlink_endpoint_recv(shmlink_endpoint *ep, shmlink_message *msg, int timeout_ms,
                                   shmlink_error *err)
{
    const char *op = "shmlink_endpoint_recv";
    if (ep == NULL || msg == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "ep and message must not be NULL");
    const int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    shmlink_lock();
    message_drop_regions_locked(msg);
    shmlink_code code;
    inbound_kind kind;
    do
        code = read_one_locked(ep, msg, deadline, &kind, err, op);
    while (code == SHMLINK_OK && kind != IN_MESSAGE);
    shmlink_unlock();
    return code;
}

void shmlink_message_clear(shmlink_message *msg)
{
    if (msg == NULL)
        return;
    shmlink_lock();
    message_drop_regions_locked(msg);
    shmlink_unlock();
    free(msg->payload);
    free(msg->regions);
    free(msg->descriptors);
    *msg = (shmlink_message){ 0 };
}

/* ---- sending -------------------------------------------------------------------------- */

/* Waits for the peer's HELLO (section 3 rule 4): the HELLO is always the peer's first
 * record, so reading it here can never take a message from a receiver. */
static shmlink_code handshake_locked(shmlink_endpoint *ep, int64_t deadline, shmlink_error *err,
                                     const char *op)
{
    shmlink_message none = SHMLINK_MESSAGE_INIT; /* the first record fills no message */
    while (!ep->s.have_peer) {
        inbound_kind kind;
        const shmlink_code code = read_one_locked(ep, &none, deadline, &kind, err, op);
        if (code != SHMLINK_OK)
            return code;
    }
    if (ep->ended)
        return closed_error(ep, err, op);
    return SHMLINK_OK;
}

/* Node's attachment rule: regions in order, then the rest of transfer; a region in
 * transfer is transferred wherever it is attached. */
static attachment *attachments_of(const shmlink_send_options *o, size_t *count)
{
    *count = 0;
    const size_t cap = o->region_count + o->transfer_count;
    attachment *atts = malloc((cap != 0 ? cap : 1) * sizeof *atts);
    if (atts == NULL)
        return NULL;
    for (size_t i = 0; i < o->region_count; i++) {
        bool transfer = false;
        for (size_t j = 0; j < o->transfer_count && !transfer; j++)
            transfer = o->transfer[j] == o->regions[i];
        atts[(*count)++] = (attachment){ o->regions[i], transfer };
    }
    for (size_t j = 0; j < o->transfer_count; j++) {
        bool shared = false;
        for (size_t i = 0; i < o->region_count && !shared; i++)
            shared = o->regions[i] == o->transfer[j];
        if (!shared || o->transfer[j] == NULL)
            atts[(*count)++] = (attachment){ o->transfer[j], true };
    }
    return atts;
}

static shmlink_code send_locked(shmlink_endpoint *ep, const void *payload, size_t payload_len,
                                const attachment *atts, size_t count, int64_t deadline,
                                shmlink_error *err, const char *op)
{
    shmlink_code code = handshake_locked(ep, deadline, err, op);
    if (code != SHMLINK_OK)
        return code;
    memfile *files[SHMLINK_MAX_REGIONS_MAX];
    uint32_t new_ids[SHMLINK_MAX_REGIONS_MAX];
    size_t new_index[SHMLINK_MAX_REGIONS_MAX];
    for (;;) {
        if (ep->ended)
            return closed_error(ep, err, op);
        if ((code = session_check_message(&ep->s, payload_len, atts, count, err, op)) != SHMLINK_OK)
            return code;
        shmlink_error inner;
        const int flushed = flush_control_locked(ep, &inner, op);
        if (flushed == FLUSH_FAILED)
            return copy_error(err, &inner, op);
        if (flushed == FLUSH_WAIT) {
            if (!wait_locked(ep, POLLOUT, deadline))
                return set_error(err, SHMLINK_ERR_TIMED_OUT, op, "the timeout passed first; nothing was sent");
            continue;
        }
        size_t frame_len, nnew;
        code = session_encode_locked(&ep->s, payload_len, atts, count, ep->frame, &frame_len, files,
                                     new_ids, new_index, &nnew, err, op);
        if (code != SHMLINK_OK)
            return code;
        int fds[SHMLINK_MAX_REGIONS_MAX];
        for (size_t k = 0; k < nnew; k++)
            fds[k] = files[k]->fd;
        /* SYNC POINT: release (MEMORY-MODEL.md section 3). Every write this thread made to
         * the attached regions happens before the peer's reads after its receive. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        const int e = sys_send_record(ep->fd, ep->frame, frame_len, payload, payload_len, fds, nnew);
        for (size_t k = 0; k < nnew; k++)
            memfile_unref(files[k]);
        if (e == EAGAIN || e == EWOULDBLOCK) {
            if (!wait_locked(ep, POLLOUT, deadline))
                return set_error(err, SHMLINK_ERR_TIMED_OUT, op, "the timeout passed first; nothing was sent");
            continue; /* encoded again: the state may have changed meanwhile */
        }
        if (e != 0 && disconnected(e)) {
            end_locked(ep, SHMLINK_ERR_PEER_CLOSED);
            return closed_error(ep, err, op);
        }
        if (e != 0) {
            end_locked(ep, SHMLINK_ERR_OS);
            return set_sys_error(err, SHMLINK_ERR_OS, op, "sendmsg", e, "the connection was closed");
        }
        session_message_sent_locked(&ep->s, ep, atts, new_ids, new_index, nnew);
        for (size_t i = 0; i < count; i++)
            if (atts[i].transfer)
                region_send_away_locked(atts[i].region, ep->s.fate);
        ep->stats.messages_out++;
        ep->stats.bytes_out += payload_len;
        return SHMLINK_OK;
    }
}

shmlink_code shmlink_endpoint_send(shmlink_endpoint *ep, const void *payload, size_t payload_len,
                                   const shmlink_send_options *options, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_send";
    if (ep == NULL || (payload == NULL && payload_len != 0))
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "ep and payload must not be NULL");
    const shmlink_send_options none = { 0 };
    const shmlink_send_options *o = options != NULL ? options : &none;
    if ((o->regions == NULL && o->region_count != 0) || (o->transfer == NULL && o->transfer_count != 0))
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "a region list is NULL but its count is not 0");
    size_t count;
    attachment *atts = attachments_of(o, &count);
    if (atts == NULL)
        return set_error(err, SHMLINK_ERR_OS, op, "out of memory");
    const int64_t deadline = o->timeout_ms == 0 ? -1 : now_ms() + o->timeout_ms;
    shmlink_lock();
    ep->stats.queued++;
    const shmlink_code code = send_locked(ep, payload, payload_len, atts, count, deadline, err, op);
    ep->stats.queued--;
    shmlink_unlock();
    free(atts);
    return code;
}

void shmlink_endpoint_release(shmlink_endpoint *ep, shmlink_region *region)
{
    if (ep == NULL || region == NULL)
        return;
    shmlink_lock();
    if (session_release_locked(&ep->s, ep, region))
        (void)flush_control_locked(ep, NULL, "shmlink_endpoint_release");
    shmlink_unlock();
}

/* ---- making endpoints ---------------------------------------------------------------- */

static const shmlink_limits *limits_of(const shmlink_endpoint_options *o)
{
    return o != NULL ? &o->limits : NULL;
}

static bool admits(const shmlink_peer_filter *f, const shmlink_peer_credentials *peer)
{
    switch (f != NULL ? f->kind : SHMLINK_PEER_SAME_USER) {
    case SHMLINK_PEER_ANY_USER:
        return true;
    case SHMLINK_PEER_UIDS:
        for (size_t i = 0; i < f->uid_count; i++)
            if (f->uids[i] == peer->uid)
                return true;
        return false;
    case SHMLINK_PEER_SAME_USER:
    default:
        return peer->uid == 0 || peer->uid == (uint32_t)sys_euid();
    }
}

static shmlink_code check_filter(const shmlink_peer_filter *f, shmlink_error *err, const char *op)
{
    if (f != NULL && f->kind != SHMLINK_PEER_SAME_USER && f->kind != SHMLINK_PEER_ANY_USER &&
        f->kind != SHMLINK_PEER_UIDS)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "unknown peer filter kind %d", (int)f->kind);
    if (f != NULL && f->kind == SHMLINK_PEER_UIDS && f->uids == NULL && f->uid_count != 0)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "uids is NULL but uid_count is not 0");
    return SHMLINK_OK;
}

shmlink_code shmlink_endpoint_pair(const shmlink_endpoint_options *options, shmlink_endpoint **a,
                                   shmlink_endpoint **b, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_pair";
    if (a == NULL || b == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "a and b must not be NULL");
    *a = *b = NULL;
    int fds[2];
    shmlink_code code = sys_socketpair(fds, err, op);
    if (code != SHMLINK_OK)
        return code;
    const bool writable = options == NULL || !options->frozen_only;
    const uint64_t realm = unique_realm();
    shmlink_lock();
    code = endpoint_new_locked(fds[0], limits_of(options), writable, 0, a, err, op);
    if (code == SHMLINK_OK) {
        code = endpoint_new_locked(fds[1], limits_of(options), writable, realm, b, err, op);
        if (code != SHMLINK_OK) {
            shmlink_unlock();
            shmlink_endpoint_free(*a);
            *a = NULL;
            return code;
        }
    } else {
        close_fd(fds[1]);
    }
    shmlink_unlock();
    return code;
}

shmlink_code shmlink_endpoint_connect(const char *path, const shmlink_connect_options *options,
                                      shmlink_endpoint **out, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_connect";
    if (out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "out must not be NULL");
    *out = NULL;
    const shmlink_connect_options none = { 0 };
    const shmlink_connect_options *o = options != NULL ? options : &none;
    shmlink_code code = check_filter(&o->server, err, op);
    if (code != SHMLINK_OK)
        return code;
    const int64_t deadline = o->timeout_ms == 0 ? -1 : now_ms() + o->timeout_ms;
    int fd;
    if ((code = sys_connect(path, &fd, err, op)) != SHMLINK_OK)
        return code;
    shmlink_peer_credentials peer;
    if ((code = sys_peer_credentials(fd, &peer, err, op)) != SHMLINK_OK) {
        close_fd(fd);
        return code;
    }
    if (!admits(&o->server, &peer)) {
        close_fd(fd);
        return set_error(err, SHMLINK_ERR_PEER_REJECTED, op,
                         "the server runs as uid %u (pid %d), which the server filter does not "
                         "allow; nothing was sent; connect to the right path or widen the filter",
                         (unsigned)peer.uid, (int)peer.pid);
    }
    shmlink_endpoint *ep;
    shmlink_lock();
    code = endpoint_new_locked(fd, &o->limits, o->accept_writable, 0, &ep, err, op);
    if (code == SHMLINK_OK)
        code = handshake_locked(ep, deadline, err, op);
    shmlink_unlock();
    if (code != SHMLINK_OK) {
        if (ep != NULL && code != SHMLINK_OK)
            shmlink_endpoint_free(ep);
        return code;
    }
    *out = ep;
    return SHMLINK_OK;
}

shmlink_code shmlink_endpoint_from_fd(int fd, const shmlink_endpoint_options *options,
                                      shmlink_endpoint **out, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_from_fd";
    if (out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "out must not be NULL");
    *out = NULL;
    shmlink_code code = sys_claim_socket(fd, err, op);
    if (code != SHMLINK_OK)
        return code;
    shmlink_lock();
    code = endpoint_new_locked(fd, limits_of(options), options == NULL || !options->frozen_only, 0,
                               out, err, op);
    shmlink_unlock();
    return code;
}

shmlink_code shmlink_endpoint_inherited(const shmlink_endpoint_options *options,
                                        shmlink_endpoint **out, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_inherited";
    if (out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "out must not be NULL");
    *out = NULL;
    const char *value = getenv("SHMLINK_FD");
    if (value == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "SHMLINK_FD is not set: this process was not started by Node's "
                         "spawnWithEndpoint() (or a parent that passes a socket the same way: an "
                         "AF_UNIX SOCK_SEQPACKET socket, its number in SHMLINK_FD)");
    char *end;
    errno = 0;
    const long n = strtol(value, &end, 10);
    while (*end == ' ' || *end == '\t' || *end == '\n')
        end++;
    if (errno != 0 || end == value || *end != '\0' || n <= 2 || n > 1 << 30)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op,
                         "SHMLINK_FD is \"%.40s\", which is not a descriptor number above 2; the "
                         "parent must set it to the number of the socket it passed down",
                         value);
    shmlink_error inner;
    shmlink_code code = sys_claim_socket((int)n, &inner, op);
    if (code == SHMLINK_ERR_INVALID_ARG) {
        const char *what = strchr(inner.message, ';'); /* after "op: syscall failed: ...;" */
        const char *detail = inner.syscall != NULL && what != NULL ? what + 2 : inner.message + strlen(op) + 2;
        return set_sys_error(err, code, op, inner.syscall, inner.errnum,
                             "SHMLINK_FD=%ld does not name the socket the parent passed down: %s; "
                             "the usual cause is a wrapper program (a shell script, npx, tsx) "
                             "between the parent and this process, which started it with its own "
                             "descriptors: start this program directly",
                             n, detail);
    }
    if (code != SHMLINK_OK)
        return copy_error(err, &inner, op);
    shmlink_lock();
    code = endpoint_new_locked((int)n, limits_of(options), options == NULL || !options->frozen_only,
                               0, out, err, op);
    shmlink_unlock();
    if (code == SHMLINK_OK)
        unsetenv("SHMLINK_FD");
    return code;
}

/* ---- queries and the end -------------------------------------------------------------- */

shmlink_code shmlink_endpoint_peer(shmlink_endpoint *ep, shmlink_peer_credentials *out,
                                   shmlink_error *err)
{
    const char *op = "shmlink_endpoint_peer";
    if (ep == NULL || out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "ep and out must not be NULL");
    shmlink_lock();
    const shmlink_code code = ep->closed_here ? closed_error(ep, err, op)
                                              : sys_peer_credentials(ep->fd, out, err, op);
    shmlink_unlock();
    return code;
}

bool shmlink_endpoint_region_id(shmlink_endpoint *ep, const shmlink_region *region, uint32_t *id)
{
    if (ep == NULL || region == NULL)
        return false;
    shmlink_lock();
    const bool bound = session_own_id(&ep->s, region, id);
    shmlink_unlock();
    return bound;
}

void shmlink_endpoint_stats_get(shmlink_endpoint *ep, shmlink_endpoint_stats *out)
{
    shmlink_lock();
    *out = ep->stats;
    out->own_regions = session_own_count(&ep->s);
    out->peer_regions = session_peer_count(&ep->s);
    out->peer_mapped_bytes = ep->s.held_bytes;
    out->inbox = 0;
    out->limits = ep->s.limits;
    shmlink_unlock();
}

uint64_t shmlink_endpoint_id(const shmlink_endpoint *ep) { return ep->id; }

int shmlink_endpoint_fd(shmlink_endpoint *ep)
{
    shmlink_lock();
    const int fd = ep->closed_here ? -1 : ep->fd;
    shmlink_unlock();
    return fd;
}

bool shmlink_endpoint_closed(shmlink_endpoint *ep)
{
    shmlink_lock();
    const bool ended = ep->ended;
    shmlink_unlock();
    return ended;
}

void shmlink_endpoint_close(shmlink_endpoint *ep)
{
    if (ep == NULL)
        return;
    shmlink_lock();
    ep->closed_here = true;
    end_locked(ep, SHMLINK_ERR_CLOSED);
    shmlink_unlock();
}

void shmlink_endpoint_free(shmlink_endpoint *ep)
{
    if (ep == NULL)
        return;
    shmlink_lock();
    ep->closed_here = true;
    end_locked(ep, SHMLINK_ERR_CLOSED);
    session_destroy_locked(&ep->s, ep);
    shmlink_unlock();
    close_fd(ep->fd);
    free(ep->rbuf);
    free(ep);
}

/* ==================================================================================== */
/* Servers                                                                               */
/* ==================================================================================== */

struct shmlink_server {
    int fd;
    char *path;
    bool has_file;
    file_id file;
    shmlink_peer_filter allow;
    uint32_t *uids; /* allow.uids, copied */
    bool accept_writable;
    shmlink_limits limits;
    uint32_t max_pending;
    shmlink_endpoint **pending; /* oldest first */
    size_t npending;
    uint64_t rejected;
    bool closed;
};

shmlink_code shmlink_endpoint_listen(const char *path, const shmlink_listen_options *options,
                                     shmlink_server **out, shmlink_error *err)
{
    const char *op = "shmlink_endpoint_listen";
    if (out == NULL || path == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "path and out must not be NULL");
    *out = NULL;
    const shmlink_listen_options none = { 0 };
    const shmlink_listen_options *o = options != NULL ? options : &none;
    shmlink_code code = check_filter(&o->allow, err, op);
    if (code != SHMLINK_OK)
        return code;
    session probe; /* validates the limits the accepted endpoints will use */
    shmlink_error inner;
    if ((code = session_init(&probe, &o->limits, false, 0, &inner)) != SHMLINK_OK)
        return copy_error(err, &inner, op);
    shmlink_lock();
    session_destroy_locked(&probe, NULL);
    shmlink_unlock();
    shmlink_server *s = calloc(1, sizeof *s);
    const uint32_t max_pending = o->max_pending != 0 ? o->max_pending : 64;
    if (s != NULL) {
        s->path = strdup(path);
        s->pending = calloc(max_pending, sizeof *s->pending);
        if (o->allow.kind == SHMLINK_PEER_UIDS && o->allow.uid_count != 0) {
            s->uids = malloc(o->allow.uid_count * sizeof *s->uids);
            if (s->uids != NULL)
                memcpy(s->uids, o->allow.uids, o->allow.uid_count * sizeof *s->uids);
        }
    }
    if (s == NULL || s->path == NULL || s->pending == NULL ||
        (o->allow.kind == SHMLINK_PEER_UIDS && o->allow.uid_count != 0 && s->uids == NULL)) {
        if (s != NULL) {
            free(s->path);
            free(s->pending);
            free(s->uids);
            free(s);
        }
        return set_error(err, SHMLINK_ERR_OS, op, "out of memory");
    }
    s->allow = (shmlink_peer_filter){ o->allow.kind, s->uids, o->allow.uid_count };
    s->accept_writable = o->accept_writable;
    s->limits = o->limits;
    s->max_pending = max_pending;
    code = sys_listen(path, o->backlog != 0 ? (int)o->backlog : 128, &s->fd, &s->has_file, &s->file,
                      err, op);
    if (code != SHMLINK_OK) {
        free(s->path);
        free(s->pending);
        free(s->uids);
        free(s);
        return code;
    }
    *out = s;
    return SHMLINK_OK;
}

/* Accepts what the kernel has queued while there is room; refused clients are shut down
 * unread. */
static shmlink_code drain_locked(shmlink_server *s, shmlink_error *err, const char *op)
{
    while (!s->closed && s->npending < s->max_pending) {
        const int fd = sys_accept(s->fd);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return SHMLINK_OK;
            return set_sys_error(err, SHMLINK_ERR_OS, op, "accept4", errno,
                                 "raise the open-file limit (ulimit -n)");
        }
        shmlink_peer_credentials peer;
        if (sys_peer_credentials(fd, &peer, NULL, op) != SHMLINK_OK || !admits(&s->allow, &peer)) {
            s->rejected++;
            sys_shutdown(fd);
            close_fd(fd);
            continue;
        }
        shmlink_endpoint *ep;
        /* A connection whose HELLO cannot even be sent is already gone: drop it. */
        if (endpoint_new_locked(fd, &s->limits, s->accept_writable, 0, &ep, NULL, op) == SHMLINK_OK)
            s->pending[s->npending++] = ep;
    }
    return SHMLINK_OK;
}

shmlink_code shmlink_server_accept(shmlink_server *s, int timeout_ms, shmlink_endpoint **out,
                                   shmlink_error *err)
{
    const char *op = "shmlink_server_accept";
    if (s == NULL || out == NULL)
        return set_error(err, SHMLINK_ERR_INVALID_ARG, op, "server and out must not be NULL");
    *out = NULL;
    const int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    shmlink_lock();
    for (;;) {
        if (s->closed) {
            shmlink_unlock();
            return set_error(err, SHMLINK_ERR_CLOSED, op,
                             "the server is closed; listen again to accept connections");
        }
        const shmlink_code code = drain_locked(s, err, op);
        if (s->npending > 0) {
            *out = s->pending[0];
            memmove(s->pending, s->pending + 1, (s->npending - 1) * sizeof *s->pending);
            s->npending--;
            shmlink_unlock();
            return SHMLINK_OK;
        }
        if (code != SHMLINK_OK) {
            shmlink_unlock();
            return code;
        }
        const int left = remaining_ms(deadline);
        if (left == 0) {
            shmlink_unlock();
            return set_error(err, SHMLINK_ERR_TIMED_OUT, op, "the timeout passed first");
        }
        const int fd = s->fd;
        shmlink_unlock();
        (void)sys_wait(fd, POLLIN, left);
        shmlink_lock();
    }
}

int shmlink_server_fd(const shmlink_server *s) { return s->fd; }
const char *shmlink_server_path(const shmlink_server *s) { return s->path; }

uint64_t shmlink_server_rejected(const shmlink_server *s)
{
    shmlink_lock();
    const uint64_t n = s->rejected;
    shmlink_unlock();
    return n;
}

void shmlink_server_close(shmlink_server *s)
{
    if (s == NULL)
        return;
    shmlink_lock();
    if (s->closed) {
        shmlink_unlock();
        return;
    }
    s->closed = true;
    sys_shutdown(s->fd);
    sys_remove_if_same(s->path, s->has_file, &s->file);
    shmlink_endpoint *pending[s->npending + 1];
    const size_t n = s->npending;
    memcpy(pending, s->pending, n * sizeof *pending);
    s->npending = 0;
    shmlink_unlock();
    for (size_t i = 0; i < n; i++)
        shmlink_endpoint_free(pending[i]);
}

void shmlink_server_free(shmlink_server *s)
{
    if (s == NULL)
        return;
    shmlink_server_close(s);
    close_fd(s->fd);
    free(s->path);
    free(s->pending);
    free(s->uids);
    free(s);
}
