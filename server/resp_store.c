/*
 * resp_store.c - stored Responses API responses and conversations (see resp_store.h): a hash table
 * of records chained per bucket, and a doubly linked list in use order (head: most recent).
 */
#include "server/resp_store.h"

#include <pthread.h>
#include <string.h>

typedef struct rec {
    struct rec *next_hash;
    struct rec *prev, *next; /* use order */
    char *id, *owner, *response, *items;
    size_t bytes;
} rec;

struct qv_resp_store {
    pthread_mutex_t mu;
    rec **buckets;
    size_t n_buckets, n, bytes, max_bytes;
    unsigned long long evictions; /* records dropped to make room */
    rec *head, *tail;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (; *s; s++)
        h = qv_fmix64(h ^ (uint8_t)*s);
    return h;
}

qv_resp_store *qv_resp_store_create(size_t max_bytes) {
    qv_resp_store *s = qv_calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->n_buckets = 256;
    if (!(s->buckets = qv_calloc(s->n_buckets, sizeof(*s->buckets)))) {
        qv_free(s);
        return NULL;
    }
    s->max_bytes = max_bytes;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void rec_free(rec *r) {
    qv_free(r->id);
    qv_free(r->owner);
    qv_free(r->response);
    qv_free(r->items);
    qv_free(r);
}

void qv_resp_store_free(qv_resp_store *s) {
    if (!s) return;
    for (rec *r = s->head, *next; r; r = next) {
        next = r->next;
        rec_free(r);
    }
    qv_free(s->buckets);
    pthread_mutex_destroy(&s->mu);
    qv_free(s);
}

static rec **slot_of(qv_resp_store *s, const char *id) {
    rec **p = &s->buckets[hash_str(id) & (s->n_buckets - 1)];
    while (*p && strcmp((*p)->id, id))
        p = &(*p)->next_hash;
    return p;
}

static void unlink_use(qv_resp_store *s, rec *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    r->prev = r->next = NULL;
}

static void push_front(qv_resp_store *s, rec *r) {
    r->next = s->head;
    r->prev = NULL;
    if (s->head)
        s->head->prev = r;
    else
        s->tail = r;
    s->head = r;
}

/* Removes r (found at *slot) and frees it. */
static void drop(qv_resp_store *s, rec **slot, rec *r) {
    *slot = r->next_hash;
    unlink_use(s, r);
    s->n--;
    s->bytes -= r->bytes;
    rec_free(r);
}

/* Doubles the table when it averages more than two records a bucket (best effort). */
static void grow(qv_resp_store *s) {
    if (s->n <= 2 * s->n_buckets) return;
    const size_t nb = s->n_buckets * 2;
    rec **b = qv_calloc(nb, sizeof(*b));
    if (!b) return;
    for (size_t i = 0; i < s->n_buckets; i++)
        for (rec *r = s->buckets[i], *next; r; r = next) {
            next = r->next_hash;
            rec **p = &b[hash_str(r->id) & (nb - 1)];
            r->next_hash = *p;
            *p = r;
        }
    qv_free(s->buckets);
    s->buckets = b;
    s->n_buckets = nb;
}

/* Evicts the least recently used records (never keep) until `need` more bytes fit. */
static void make_room(qv_resp_store *s, size_t need, const rec *keep) {
    while (s->tail && s->tail != keep && s->bytes + need > s->max_bytes) {
        drop(s, slot_of(s, s->tail->id), s->tail);
        s->evictions++;
    }
}

/* A record's bytes with these texts. */
static size_t rec_bytes(const char *id, const char *owner, const char *response,
                        const char *items) {
    return sizeof(rec) + strlen(id) + strlen(owner) + strlen(response) + strlen(items) + 4;
}

bool qv_resp_store_put(qv_resp_store *s, const char *id, const char *owner, const char *response,
                       const char *items) {
    const size_t bytes = rec_bytes(id, owner, response, items);
    if (bytes > s->max_bytes) return false;
    rec *r = qv_calloc(1, sizeof(*r));
    if (!r || !(r->id = qv_strdup(id)) || !(r->owner = qv_strdup(owner)) ||
        !(r->response = qv_strdup(response)) || !(r->items = qv_strdup(items))) {
        if (r) rec_free(r);
        return false;
    }
    r->bytes = bytes;
    pthread_mutex_lock(&s->mu);
    rec **slot = slot_of(s, id);
    if (*slot) drop(s, slot, *slot);
    make_room(s, bytes, NULL);
    slot = slot_of(s, id);
    r->next_hash = *slot;
    *slot = r;
    push_front(s, r);
    s->n++;
    s->bytes += bytes;
    grow(s);
    pthread_mutex_unlock(&s->mu);
    return true;
}

qv_status qv_resp_store_get(qv_resp_store *s, const char *id, const char *owner, char **response,
                            char **items) {
    if (response) *response = NULL;
    if (items) *items = NULL;
    pthread_mutex_lock(&s->mu);
    rec *r = *slot_of(s, id);
    qv_status st = r && !strcmp(r->owner, owner) ? QV_OK : QV_ERR_NOT_FOUND;
    if (st == QV_OK) {
        unlink_use(s, r);
        push_front(s, r);
        if ((response && !(*response = qv_strdup(r->response))) ||
            (items && !(*items = qv_strdup(r->items))))
            st = QV_ERR_NOMEM;
    }
    pthread_mutex_unlock(&s->mu);
    if (st == QV_ERR_NOMEM) {
        if (response) qv_free(*response), *response = NULL;
        if (items) qv_free(*items), *items = NULL;
    }
    return st;
}

qv_status qv_resp_store_edit(qv_resp_store *s, const char *id, const char *owner,
                             qv_resp_store_edit_fn edit, void *user) {
    char *resp2 = NULL, *items2 = NULL;
    pthread_mutex_lock(&s->mu);
    rec *r = *slot_of(s, id);
    qv_status st = r && !strcmp(r->owner, owner) ? QV_OK : QV_ERR_NOT_FOUND;
    if (st == QV_OK) st = edit(r->response, r->items, user, &resp2, &items2);
    if (st == QV_OK) {
        const size_t bytes =
            rec_bytes(r->id, r->owner, resp2 ? resp2 : r->response, items2 ? items2 : r->items);
        if (bytes > s->max_bytes) {
            st = QV_ERR_LIMIT;
        } else {
            unlink_use(s, r);
            push_front(s, r);
            s->bytes = s->bytes - r->bytes + bytes;
            r->bytes = bytes;
            if (resp2) qv_free(r->response), r->response = resp2, resp2 = NULL;
            if (items2) qv_free(r->items), r->items = items2, items2 = NULL;
            make_room(s, 0, r);
        }
    }
    pthread_mutex_unlock(&s->mu);
    qv_free(resp2);
    qv_free(items2);
    return st;
}

bool qv_resp_store_delete(qv_resp_store *s, const char *id, const char *owner) {
    pthread_mutex_lock(&s->mu);
    rec **slot = slot_of(s, id);
    const bool found = *slot && !strcmp((*slot)->owner, owner);
    if (found) drop(s, slot, *slot);
    pthread_mutex_unlock(&s->mu);
    return found;
}

size_t qv_resp_store_max_bytes(const qv_resp_store *s) { return s->max_bytes; }

unsigned long long qv_resp_store_evictions(qv_resp_store *s) {
    pthread_mutex_lock(&s->mu);
    const unsigned long long n = s->evictions;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void qv_resp_store_stats(qv_resp_store *s, size_t *n, size_t *bytes) {
    pthread_mutex_lock(&s->mu);
    *n = s->n;
    *bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
}
