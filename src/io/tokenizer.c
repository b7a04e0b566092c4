/* SentencePiece-style BPE tokenizer, bit-compatible with llama2.c's run.c.
 *
 * run.c's encode() rescans every adjacent pair after each merge, which is
 * O(n^2) in the text length. Here the symbols live in a doubly linked list
 * and the mergeable pairs in a binary heap keyed by (score desc, position
 * asc), so each merge costs O(log n). Stale heap entries are detected
 * lazily with a per-symbol generation counter instead of being removed.
 * String -> id lookups go through an open-addressing hash table. The text
 * is also cut where no merge can ever cross (see can_split), and each piece
 * is merged on its own: same result, but the work stays in cache. */
#include "../core/internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* run.c starts its best score at -1e10 and merges only on a strictly greater
 * score, so a pair whose token scores -1e10 or less never merges. */
#define TOK_MIN_SCORE (-1e10f)

/* The pieces of SentencePiece vocabularies (GGUF) mark a space with U+2581
 * LOWER ONE EIGHTH BLOCK; llama2.c's exporter writes a plain space. */
static const char k_sp_space[3] = {(char)0xE2, (char)0x96, (char)0x81};

struct wmat_tokenizer {
    int n_vocab;
    int bos_id, eos_id;       /* -1: none */
    int space_id;             /* the piece " " (run.c's dummy prefix), or -1 */
    int32_t byte_id[256];     /* token of each byte when a codepoint is not in the vocab */
    uint32_t header_max_len;  /* max_token_length of a loaded file, kept for a faithful save */
    size_t max_elen;          /* longest effective piece: a longer string is never in the vocab */
    char *blob;               /* all pieces, each followed by a NUL */
    size_t *off;              /* (n_vocab + 1) offsets into blob */
    uint32_t *elen;           /* (n_vocab) length up to the first NUL: what run.c's strcmp sees */
    float *scores;            /* (n_vocab) */
    int32_t *types;           /* (n_vocab) SentencePiece token types */
    int32_t *rank;            /* (n_vocab) 0 for the highest score; equal scores share a rank */
    int splittable;           /* no empty piece: see can_split() */
    char byte_str[256][2];    /* what decode() returns for "<0xXX>" without a buffer */
    uint8_t bigram[256 * 256 / 8]; /* byte pairs that occur inside some piece */
    int32_t *slots;           /* hash table of ids, -1 empty; size mask + 1 */
    uint32_t *slot_hash;      /* full hash of each slot's piece, to skip most memcmp */
    size_t mask;
};

/* ---------------------------------------------------------------- lookup */

static inline uint32_t hash_bytes(uint32_t h, const char *s, size_t n)
{
    /* FNV-1a: pieces are a few bytes long, and it can hash a concatenation
     * in two parts without building it. */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}
#define HASH_SEED 2166136261u

static inline const char *piece_of(const wmat_tokenizer *t, int id) { return t->blob + t->off[id]; }

/* Id of the piece equal to a ++ b (b may be empty), or -1. With duplicate
 * pieces the lowest id wins (run.c's bsearch leaves it unspecified). */
static int lookup2(const wmat_tokenizer *t, const char *a, size_t la, const char *b, size_t lb)
{
    size_t n = la + lb;
    if (n > t->max_elen) return -1;
    uint32_t h = hash_bytes(hash_bytes(HASH_SEED, a, la), b, lb);
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slots[i];
        if (id < 0) return -1;
        if (t->slot_hash[i] != h || t->elen[id] != n) continue;
        const char *p = piece_of(t, id);
        if (memcmp(p, a, la) == 0 && (lb == 0 || memcmp(p + la, b, lb) == 0)) return id;
    }
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xXX>" piece, or -1. */
static int byte_piece_value(const char *p, size_t n)
{
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

/* ---------------------------------------------------------------- build */

static void tok_release(wmat_tokenizer *t)
{
    wmat__free(t->blob);
    wmat__free(t->off);
    wmat__free(t->elen);
    wmat__free(t->scores);
    wmat__free(t->types);
    wmat__free(t->rank);
    wmat__free(t->slots);
    wmat__free(t->slot_hash);
    wmat__free(t);
}

void wmat_tokenizer_free(wmat_tokenizer *t)
{
    if (t) tok_release(t);
}

/* A tokenizer with room for n pieces totalling blob_bytes (NULs excluded). */
static wmat_tokenizer *tok_alloc(int n, size_t blob_bytes)
{
    wmat_tokenizer *t = wmat__calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n_vocab = n;
    size_t slots = 16;
    while (slots < (size_t)n * 2) slots *= 2;
    t->mask = slots - 1;
    t->blob = wmat__malloc(blob_bytes + (size_t)n);
    t->off = wmat__malloc(((size_t)n + 1) * sizeof *t->off);
    t->elen = wmat__malloc((size_t)n * sizeof *t->elen);
    t->scores = wmat__malloc((size_t)n * sizeof *t->scores);
    t->types = wmat__malloc((size_t)n * sizeof *t->types);
    t->rank = wmat__malloc((size_t)n * sizeof *t->rank);
    t->slots = wmat__malloc(slots * sizeof *t->slots);
    t->slot_hash = wmat__malloc(slots * sizeof *t->slot_hash);
    if (!t->blob || !t->off || !t->elen || !t->scores || !t->types || !t->rank || !t->slots ||
        !t->slot_hash) {
        tok_release(t);
        return NULL;
    }
    t->off[0] = 0;
    return t;
}

typedef struct {
    float score;
    int32_t id;
} tok_by_score;

static int by_score_desc(const void *a, const void *b)
{
    float x = ((const tok_by_score *)a)->score, y = ((const tok_by_score *)b)->score;
    return (x < y) - (x > y);
}

/* Derive everything encode() needs once blob, off, scores and (optionally)
 * types are filled. `llama2c_layout`: byte b is token b + 3, as run.c assumes;
 * otherwise the byte tokens are found by their "<0xXX>" pieces. */
static int tok_finish(wmat_tokenizer *t, int have_types, int llama2c_layout)
{
    int n = t->n_vocab;
    /* Merge priority only compares scores, so integer ranks can stand in
     * for them in the heap. */
    tok_by_score *order = wmat__malloc((size_t)n * sizeof *order);
    if (!order) return WMAT_ERR_NOMEM;
    for (int id = 0; id < n; id++) order[id] = (tok_by_score){t->scores[id], id};
    qsort(order, (size_t)n, sizeof *order, by_score_desc);
    int32_t r = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && order[i].score != order[i - 1].score) r++;
        t->rank[order[i].id] = r;
    }
    wmat__free(order);

    t->max_elen = 0;
    t->splittable = 1;
    memset(t->bigram, 0, sizeof t->bigram);
    memset(t->slots, 0xff, (t->mask + 1) * sizeof *t->slots);
    for (int id = 0; id < n; id++) {
        const char *p = piece_of(t, id);
        size_t full = t->off[id + 1] - t->off[id] - 1;
        size_t e = strnlen(p, full);
        t->elen[id] = (uint32_t)e;
        if (e > t->max_elen) t->max_elen = e;
        if (e == 0) t->splittable = 0;
        for (size_t k = 1; k < e; k++) {
            unsigned pair = (unsigned char)p[k - 1] << 8 | (unsigned char)p[k];
            t->bigram[pair >> 3] |= (uint8_t)(1u << (pair & 7));
        }
        if (!have_types) {
            int32_t ty = 1;
            if (byte_piece_value(p, full) >= 0) ty = 6;
            else if (id == t->bos_id || id == t->eos_id) ty = 3;
            else if (full == 5 && memcmp(p, "<unk>", 5) == 0) ty = 2;
            t->types[id] = ty;
        }
        uint32_t h = hash_bytes(HASH_SEED, p, e);
        size_t i = h & t->mask;
        for (; t->slots[i] >= 0; i = (i + 1) & t->mask) {
            int32_t o = t->slots[i];
            if (t->slot_hash[i] == h && t->elen[o] == e && memcmp(piece_of(t, o), p, e) == 0) break;
        }
        if (t->slots[i] < 0) { /* first of equal pieces keeps the slot */
            t->slots[i] = id;
            t->slot_hash[i] = h;
        }
    }
    int unk = 0;
    for (int id = 0; id < n; id++)
        if (t->types[id] == 2) {
            unk = id;
            break;
        }
    for (int b = 0; b < 256; b++) {
        t->byte_str[b][0] = (char)b;
        t->byte_str[b][1] = '\0';
        char name[7];
        static const char hex[] = "0123456789ABCDEF";
        name[0] = '<', name[1] = '0', name[2] = 'x', name[3] = hex[b >> 4], name[4] = hex[b & 15];
        name[5] = '>', name[6] = '\0';
        int id = (llama2c_layout && b + 3 < n) ? b + 3 : lookup2(t, name, 6, NULL, 0);
        t->byte_id[b] = id >= 0 ? id : unk;
    }
    t->space_id = lookup2(t, " ", 1, NULL, 0);
    return WMAT_OK;
}

/* ---------------------------------------------------------------- llama2.c files */

static int32_t rd_i32(const unsigned char *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
static float rd_f32(const unsigned char *p)
{
    float v;
    memcpy(&v, p, 4);
    return v;
}

int wmat_tokenizer_load_llama2c(wmat_tokenizer **out, const char *path, int vocab_size)
{
    if (!out || !path) return wmat_set_error(WMAT_ERR_INVALID, "tokenizer: NULL argument");
    *out = NULL;
    wmat_map m;
    int rc = wmat__map_file(path, &m);
    if (rc) return rc;
    const unsigned char *d = m.addr;
    size_t size = m.len;
    if (size == 0) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: empty file, not a tokenizer", path);
        goto done;
    }
    if (size < 4) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: truncated header (%zu bytes)", path, size);
        goto done;
    }
    int32_t header_max = rd_i32(d);
    if (header_max < 0) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: negative max_token_length %d", path, (int)header_max);
        goto done;
    }

    /* Pass 1 validates every record before anything is allocated, so a
     * hostile vocab_size or length cannot ask for memory the file does not
     * back. */
    size_t off = 4, blob_bytes = 0;
    int n = 0;
    while (vocab_size > 0 ? n < vocab_size : off < size) {
        if (n == INT32_MAX) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: too many tokens", path);
            goto done;
        }
        if (size - off < 8) {
            if (vocab_size > 0)
                rc = wmat_set_error(WMAT_ERR_FORMAT,
                                    "%s: truncated: token %d of %d starts at byte %zu of %zu", path, n,
                                    vocab_size, off, size);
            else
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: truncated record of token %d at byte %zu of %zu",
                                    path, n, off, size);
            goto done;
        }
        float score = rd_f32(d + off);
        int32_t len = rd_i32(d + off + 4);
        if (isnan(score)) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: token %d has a NaN score", path, n);
            goto done;
        }
        if (len < 0) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: token %d has a negative length %d", path, n, (int)len);
            goto done;
        }
        if ((size_t)len > size - off - 8) {
            rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: token %d: length %d exceeds the %zu bytes left", path,
                                n, (int)len, size - off - 8);
            goto done;
        }
        off += 8 + (size_t)len;
        blob_bytes += (size_t)len;
        n++;
    }
    if (n == 0) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: no tokens", path);
        goto done;
    }

    wmat_tokenizer *t = tok_alloc(n, blob_bytes);
    if (!t) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %d tokens", path, n);
        goto done;
    }
    t->bos_id = n > 1 ? 1 : -1;
    t->eos_id = n > 2 ? 2 : -1;
    t->header_max_len = (uint32_t)header_max;
    off = 4;
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)rd_i32(d + off + 4);
        t->scores[i] = rd_f32(d + off);
        memcpy(t->blob + pos, d + off + 8, len);
        t->blob[pos + len] = '\0';
        pos += len + 1;
        t->off[i + 1] = pos;
        off += 8 + len;
    }
    if (tok_finish(t, 0, 1) != WMAT_OK) {
        tok_release(t);
        rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for %d tokens", path, n);
        goto done;
    }
    *out = t;
done:
    wmat__unmap(&m);
    return rc;
}

int wmat_tokenizer_from_vocab(wmat_tokenizer **out, int n_vocab, const char *const *pieces,
                              const size_t *piece_lens, const float *scores, const int32_t *types,
                              int bos_id, int eos_id)
{
    if (!out) return wmat_set_error(WMAT_ERR_INVALID, "tokenizer: NULL output");
    *out = NULL;
    if (n_vocab <= 0 || !pieces)
        return wmat_set_error(WMAT_ERR_INVALID, "tokenizer: empty vocabulary (%d pieces)", n_vocab);
    if (bos_id < -1 || bos_id >= n_vocab || eos_id < -1 || eos_id >= n_vocab)
        return wmat_set_error(WMAT_ERR_INVALID, "tokenizer: bos %d / eos %d outside the vocabulary of %d",
                              bos_id, eos_id, n_vocab);
    size_t blob_bytes = 0;
    for (int i = 0; i < n_vocab; i++) {
        size_t len = piece_lens ? piece_lens[i] : (pieces[i] ? strlen(pieces[i]) : 0);
        if (len > 0 && !pieces[i])
            return wmat_set_error(WMAT_ERR_INVALID, "tokenizer: piece %d is NULL", i);
        /* the llama2.c format stores lengths as int32 */
        if (len > INT32_MAX)
            return wmat_set_error(WMAT_ERR_FORMAT, "tokenizer: piece %d is %zu bytes long", i, len);
        if (scores && isnan(scores[i]))
            return wmat_set_error(WMAT_ERR_FORMAT, "tokenizer: piece %d has a NaN score", i);
        if (len > SIZE_MAX - blob_bytes - (size_t)n_vocab)
            return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer: vocabulary too large");
        blob_bytes += len;
    }
    wmat_tokenizer *t = tok_alloc(n_vocab, blob_bytes);
    if (!t) return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer: out of memory for %d pieces", n_vocab);
    t->bos_id = bos_id;
    t->eos_id = eos_id;
    size_t pos = 0, max_len = 0;
    for (int i = 0; i < n_vocab; i++) {
        size_t len = piece_lens ? piece_lens[i] : (pieces[i] ? strlen(pieces[i]) : 0);
        const char *p = pieces[i];
        size_t start = pos;
        /* Store spaces as llama2.c does so that the dummy prefix " " and the
         * text's own spaces find these pieces. */
        for (size_t k = 0; k < len;) {
            if (len - k >= 3 && memcmp(p + k, k_sp_space, 3) == 0) {
                t->blob[pos++] = ' ';
                k += 3;
            } else {
                t->blob[pos++] = p[k++];
            }
        }
        if (pos - start > max_len) max_len = pos - start;
        t->blob[pos++] = '\0';
        t->off[i + 1] = pos;
        t->scores[i] = scores ? scores[i] : 0.0f;
        if (types) t->types[i] = types[i];
    }
    t->header_max_len = (uint32_t)max_len;
    /* GGUF vocabularies need not put the bytes at 3..258: look them up */
    if (tok_finish(t, types != NULL, 0) != WMAT_OK) {
        tok_release(t);
        return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer: out of memory for %d pieces", n_vocab);
    }
    *out = t;
    return WMAT_OK;
}

/* ---------------------------------------------------------------- accessors */

int wmat_tokenizer_vocab_size(const wmat_tokenizer *t) { return t ? t->n_vocab : 0; }
int wmat_tokenizer_bos(const wmat_tokenizer *t) { return t ? t->bos_id : -1; }
int wmat_tokenizer_eos(const wmat_tokenizer *t) { return t ? t->eos_id : -1; }

const char *wmat_tokenizer_piece(const wmat_tokenizer *t, int id, size_t *len)
{
    if (!t || id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->off[id + 1] - t->off[id] - 1;
    return piece_of(t, id);
}

float wmat_tokenizer_score(const wmat_tokenizer *t, int id)
{
    return (t && id >= 0 && id < t->n_vocab) ? t->scores[id] : 0.0f;
}

int32_t wmat_tokenizer_type(const wmat_tokenizer *t, int id)
{
    return (t && id >= 0 && id < t->n_vocab) ? t->types[id] : 0;
}

/* ---------------------------------------------------------------- encode */

typedef struct {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t gen;       /* bumped whenever the pair (this, next) changes */
} tok_sym;

typedef struct {
    int32_t rank; /* of the merged token's score */
    int32_t left; /* symbol index: symbols never reorder, so it orders by position */
    uint32_t gen; /* left's gen when pushed: stale if it has moved on */
    int32_t id;   /* the merged token */
} tok_cand;

typedef struct {
    tok_cand *a;
    size_t n, cap;
} tok_heap;

/* run.c picks the highest score, and the leftmost pair among equals. */
static inline int cand_before(const tok_cand *x, const tok_cand *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_down(tok_heap *h, size_t i)
{
    tok_cand c = h->a[i];
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= h->n) break;
        if (k + 1 < h->n && cand_before(&h->a[k + 1], &h->a[k])) k++;
        if (!cand_before(&h->a[k], &c)) break;
        h->a[i] = h->a[k];
        i = k;
    }
    h->a[i] = c;
}

static int heap_push(tok_heap *h, tok_cand c)
{
    if (h->n == h->cap) {
        size_t cap = h->cap * 2;
        tok_cand *a = wmat__realloc(h->a, cap * sizeof *a);
        if (!a) return WMAT_ERR_NOMEM;
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h->a[p])) break;
        h->a[i] = h->a[p];
        i = p;
    }
    h->a[i] = c;
    return WMAT_OK;
}

static void heap_pop(tok_heap *h)
{
    h->a[0] = h->a[--h->n];
    if (h->n) heap_down(h, 0);
}

/* The merge candidate of symbol `l` and its right neighbour, if the merged
 * string is a token run.c would merge into. */
static int pair_cand(const wmat_tokenizer *t, const tok_sym *s, int32_t l, tok_cand *c)
{
    int32_t r = s[l].next;
    if (r < 0) return 0;
    int a = s[l].id, b = s[r].id;
    int id = lookup2(t, piece_of(t, a), t->elen[a], piece_of(t, b), t->elen[b]);
    if (id < 0 || !(t->scores[id] > TOK_MIN_SCORE)) return 0;
    c->rank = t->rank[id];
    c->left = l;
    c->gen = s[l].gen;
    c->id = id;
    return 1;
}

/* True if no merge can ever join symbols a and b: every merged piece is the
 * concatenation of its parts, so one spanning a|b would contain the last
 * byte of a followed by the first byte of b, and no piece has that pair.
 * (An empty piece would break "the last byte of a", hence `splittable`.) */
static inline int can_split(const wmat_tokenizer *t, int a, int b)
{
    if (!t->splittable) return 0;
    unsigned pair = (unsigned char)piece_of(t, a)[t->elen[a] - 1] << 8 | (unsigned char)piece_of(t, b)[0];
    return !(t->bigram[pair >> 3] & (1u << (pair & 7)));
}

/* run.c's merge loop on the symbols [lo, hi), which no merge can join to
 * their neighbours. Afterwards the segment's list starts at lo. */
static int merge_segment(const wmat_tokenizer *t, tok_sym *s, int32_t lo, int32_t hi, tok_heap *h)
{
    for (int32_t i = lo; i < hi; i++) {
        s[i].prev = i > lo ? i - 1 : -1;
        s[i].next = i + 1 < hi ? i + 1 : -1;
    }
    h->n = 0;
    for (int32_t i = lo; i + 1 < hi; i++) {
        tok_cand c;
        if (pair_cand(t, s, i, &c)) h->a[h->n++] = c; /* capacity >= number of symbols */
    }
    for (size_t i = h->n / 2; i-- > 0;) heap_down(h, i);

    while (h->n) {
        tok_cand c = h->a[0];
        heap_pop(h);
        int32_t l = c.left;
        if (s[l].gen != c.gen) continue;
        int32_t r = s[l].next;
        s[l].id = c.id;
        s[l].next = s[r].next;
        if (s[r].next >= 0) s[s[r].next].prev = l;
        s[r].gen++; /* r is gone: its pair entries are stale */
        s[l].gen++;
        tok_cand nc;
        int32_t p = s[l].prev;
        if (p >= 0) {
            s[p].gen++;
            if (pair_cand(t, s, p, &nc) && heap_push(h, nc) != WMAT_OK) return WMAT_ERR_NOMEM;
        }
        if (pair_cand(t, s, l, &nc) && heap_push(h, nc) != WMAT_OK) return WMAT_ERR_NOMEM;
    }
    return WMAT_OK;
}

int wmat_tokenizer_encode(const wmat_tokenizer *t, const char *text, size_t len, int bos, int eos,
                          int32_t **out_ids, size_t *n_out)
{
    if (!out_ids || !n_out) return wmat_set_error(WMAT_ERR_INVALID, "tokenizer encode: NULL output");
    *out_ids = NULL;
    *n_out = 0;
    if (!t || (!text && len)) return wmat_set_error(WMAT_ERR_INVALID, "tokenizer encode: NULL argument");
    /* run.c encodes a C string: it ends at the first NUL */
    if (len) {
        const char *nul = memchr(text, '\0', len);
        if (nul) len = (size_t)(nul - text);
    }
    if (len > (size_t)INT32_MAX - 8)
        return wmat_set_error(WMAT_ERR_INVALID, "tokenizer encode: text of %zu bytes is too long", len);

    size_t max_sym = len + 2; /* bos + dummy prefix + one per byte */
    tok_sym *s = wmat__malloc(max_sym * sizeof *s);
    int32_t *ids = wmat__malloc((len + 3) * sizeof *ids);
    tok_heap h = {NULL, 0, 64};
    h.a = wmat__malloc(h.cap * sizeof *h.a);
    if (!s || !ids || !h.a) goto nomem;

    int32_t n = 0;
    /* run.c puts BOS in the list before merging, so BOS takes part in merges */
    if (bos && t->bos_id >= 0) s[n++].id = t->bos_id;
    if (len) s[n++].id = t->space_id >= 0 ? t->space_id : t->byte_id[' '];
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        /* a codepoint as run.c groups it: any byte plus up to three
         * following continuation bytes, valid UTF-8 or not */
        size_t g = 1;
        while (g < 4 && i + g < len && (u[i + g] & 0xC0) == 0x80) g++;
        int id = lookup2(t, text + i, g, NULL, 0);
        if (id >= 0) {
            s[n++].id = id;
        } else {
            for (size_t k = 0; k < g; k++) s[n++].id = t->byte_id[u[i + k]];
        }
        i += g;
    }

    /* Merges in segments that no merge can join run independently of each
     * other, in the same relative order as in run.c's global loop, so each
     * segment is merged on its own while its symbols are in cache. */
    size_t k = 0;
    for (int32_t lo = 0; lo < n;) {
        int32_t hi = lo + 1;
        while (hi < n && !can_split(t, s[hi - 1].id, s[hi].id)) hi++;
        if ((size_t)(hi - lo) > h.cap) {
            tok_cand *a = wmat__realloc(h.a, (size_t)(hi - lo) * sizeof *a);
            if (!a) goto nomem;
            h.a = a;
            h.cap = (size_t)(hi - lo);
        }
        for (int32_t i = lo; i < hi; i++) s[i].gen = 0;
        if (merge_segment(t, s, lo, hi, &h) != WMAT_OK) goto nomem;
        for (int32_t i = lo; i >= 0; i = s[i].next) ids[k++] = s[i].id;
        lo = hi;
    }
    if (eos && t->eos_id >= 0) ids[k++] = t->eos_id;
    wmat__free(s);
    wmat__free(h.a);
    *out_ids = ids;
    *n_out = k;
    return WMAT_OK;

nomem:
    wmat__free(s);
    wmat__free(ids);
    wmat__free(h.a);
    return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer encode: out of memory for %zu bytes of text", len);
}

/* ---------------------------------------------------------------- decode */

const char *wmat_tokenizer_decode(const wmat_tokenizer *t, int prev, int id, char *buf, size_t *len)
{
    if (!t || id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return "";
    }
    const char *p = piece_of(t, id);
    size_t n = t->off[id + 1] - t->off[id] - 1;
    /* SentencePiece drops the dummy-prefix space of the first word */
    if (prev == t->bos_id && prev >= 0 && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    int b = byte_piece_value(p, n);
    if (b >= 0) {
        if (len) *len = 1;
        if (!buf) return t->byte_str[b];
        buf[0] = (char)b;
        buf[1] = '\0';
        return buf;
    }
    if (len) *len = n;
    return p;
}

/* ---------------------------------------------------------------- save */

int wmat_tokenizer_save_llama2c(const wmat_tokenizer *t, const char *path)
{
    if (!t || !path) return wmat_set_error(WMAT_ERR_INVALID, "tokenizer save: NULL argument");
    size_t max_len = t->header_max_len;
    for (int i = 0; i < t->n_vocab; i++) {
        size_t n = t->off[i + 1] - t->off[i] - 1;
        if (n > max_len) max_len = n;
    }
    if (max_len > INT32_MAX)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: a piece is too long for the llama2.c format", path);
    wmat_afile af;
    int rc = wmat__afile_open(&af, path);
    if (rc) return rc;
    int32_t hdr = (int32_t)max_len;
    rc = wmat__afile_write(&af, &hdr, 4);
    for (int i = 0; i < t->n_vocab && rc == WMAT_OK; i++) {
        int32_t n = (int32_t)(t->off[i + 1] - t->off[i] - 1);
        unsigned char rec[8];
        memcpy(rec, &t->scores[i], 4);
        memcpy(rec + 4, &n, 4);
        rc = wmat__afile_write(&af, rec, 8);
        if (rc == WMAT_OK) rc = wmat__afile_write(&af, piece_of(t, i), (size_t)n);
    }
    if (rc != WMAT_OK) {
        wmat__afile_abort(&af);
        return rc;
    }
    return wmat__afile_commit(&af);
}
