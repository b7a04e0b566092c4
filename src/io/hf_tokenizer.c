/* tokenizer.json and tokenizer_config.json for Hugging Face directories,
 * made from wmat's SentencePiece-style (llama2.c) tokenizer so that the
 * tokenizers library gives the ids wmat_tokenizer_encode gives.
 *
 * The layout is the one transformers' LlamaConverter writes for a
 * SentencePiece BPE model: a "BPE" model with byte_fallback, pieces spelled
 * with U+2581 for spaces, the normalizer Prepend("▁") + Replace(" ", "▁")
 * (SentencePiece's dummy prefix; run.c's leading " " token), no
 * pre-tokenizer (the whole text is one word, as run.c merges it), BOS added
 * by a TemplateProcessing, and the decoder chain Replace/ByteFallback/Fuse/
 * Strip.
 *
 * Merges: run.c merges, anywhere in the text, the adjacent pair whose
 * concatenation is the highest-scoring piece (the leftmost among equal
 * scores); the tokenizers library merges the pair of lowest rank (then the
 * leftmost). Listing, for every piece a merge can produce, each split of it
 * into two pieces, in descending score of the piece, makes the two orders
 * the same. Pieces of equal score (Llama's whitespace runs all score -1e9)
 * cannot share a rank: among them a longer left part comes first, so that a
 * run grows from its left end as run.c's leftmost rule grows it. */
#include "hf_tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* run.c never merges into a piece scoring -1e10 or less (src/io/tokenizer.c) */
#define MIN_SCORE (-1e10f)
#define SP "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space */

/* Valid UTF-8 without NUL: what a JSON string (and Rust's str) can hold. */
static bool utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (!c) return false;
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) k = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) k = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) k = 3, cp = c & 0x07, min = 0x10000;
        else return false;
        if (n - i <= k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += k + 1;
    }
    return true;
}

/* What the two files need to know about the vocabulary. */
typedef struct {
    int n;
    int unk, bos, eos;  /* -1: none */
    char **key;         /* (n) the id's string in tokenizer.json, NULL: left out */
    bool *special;      /* (n) an added (special) token */
    bool space_piece;   /* the vocabulary has the piece " " */
} hf_vocab;

static void vocab_free(hf_vocab *v)
{
    if (v->key)
        for (int i = 0; i < v->n; i++) wmat__free(v->key[i]);
    wmat__free(v->key);
    wmat__free(v->special);
}

static char *dup_n(const char *s, size_t n)
{
    char *d = wmat__malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* A special token's content: its piece without surrounding whitespace
 * (llama2.c's exporter stores BOS as "\n<s>\n"), else a usual name. */
static char *special_name(const char *p, size_t n, const char *fallback, int id)
{
    while (n && (*p == '\n' || *p == ' ' || *p == '\t' || *p == '\r')) p++, n--;
    while (n && (p[n - 1] == '\n' || p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r')) n--;
    if (n && utf8_ok((const unsigned char *)p, n)) return dup_n(p, n);
    char buf[32];
    if (fallback) snprintf(buf, sizeof buf, "%s", fallback);
    else snprintf(buf, sizeof buf, "<ctrl%d>", id);
    return dup_n(buf, strlen(buf));
}

/* A piece in tokenizer.json's spelling: spaces as U+2581. */
static char *sp_spelling(const char *p, size_t n)
{
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += p[i] == ' ';
    char *d = wmat__malloc(n + 2 * spaces + 1), *q = d;
    if (!d) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(q, SP, 3);
            q += 3;
        } else {
            *q++ = p[i];
        }
    }
    *q = '\0';
    return d;
}

typedef struct {
    const char *s;
    size_t n;
    int id;
} piece_ref;

static int cmp_ref(const void *a, const void *b)
{
    const piece_ref *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_key(const void *a, const void *b)
{
    const piece_ref *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->id > y->id) - (x->id < y->id);
}

/* Keys and special flags of every id; an id whose piece JSON cannot hold
 * (invalid UTF-8, a NUL) or that repeats an earlier id's string is left
 * out, as wmat's lookup never finds a later duplicate either. */
static int vocab_build(const wmat_tokenizer *t, hf_vocab *v)
{
    memset(v, 0, sizeof *v);
    v->n = wmat_tokenizer_vocab_size(t);
    v->bos = wmat_tokenizer_bos(t);
    v->eos = wmat_tokenizer_eos(t);
    v->unk = -1;
    v->key = wmat__calloc((size_t)v->n, sizeof *v->key);
    v->special = wmat__calloc((size_t)v->n, sizeof *v->special);
    piece_ref *by_key = wmat__malloc((size_t)v->n * sizeof *by_key);
    if (!v->key || !v->special || !by_key) goto nomem;
    for (int i = 0; i < v->n; i++)
        if (wmat_tokenizer_type(t, i) == 2) {
            v->unk = i;
            break;
        }
    int nk = 0;
    for (int i = 0; i < v->n; i++) {
        size_t len;
        const char *p = wmat_tokenizer_piece(t, i, &len);
        int32_t ty = wmat_tokenizer_type(t, i);
        if (len == 1 && p[0] == ' ') v->space_piece = true;
        if (i == v->unk || i == v->bos || i == v->eos || ty == 3) {
            v->special[i] = true;
            v->key[i] = special_name(p, len, i == v->unk ? "<unk>" : i == v->bos ? "<s>" : i == v->eos ? "</s>" : NULL, i);
        } else if (utf8_ok((const unsigned char *)p, len)) {
            v->key[i] = sp_spelling(p, len);
        } else {
            continue;
        }
        if (!v->key[i]) goto nomem;
        by_key[nk++] = (piece_ref){v->key[i], 0, i};
    }
    qsort(by_key, (size_t)nk, sizeof *by_key, cmp_key);
    for (int k = 1; k < nk; k++)
        if (!strcmp(by_key[k].s, by_key[k - 1].s)) {
            int id = by_key[k].id;
            by_key[k].s = by_key[k - 1].s; /* keep comparing with the survivor */
            wmat__free(v->key[id]);
            v->key[id] = NULL;
            v->special[id] = false;
        }
    wmat__free(by_key);
    return WMAT_OK;
nomem:
    wmat__free(by_key);
    vocab_free(v);
    return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer.json: out of memory for %d tokens",
                          wmat_tokenizer_vocab_size(t));
}

/* ------------------------------------------------------------ merges */

typedef struct {
    float score;   /* of the merged piece */
    uint32_t llen; /* bytes of the left part */
    int32_t id, l, r;
} hf_merge;

static int cmp_merge(const void *a, const void *b)
{
    const hf_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->llen != y->llen) return x->llen > y->llen ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return (x->l > y->l) - (x->l < y->l);
}

static int find_piece(const piece_ref *sorted, int n, const char *s, size_t len)
{
    piece_ref key = {s, len, -1};
    int lo = 0, hi = n; /* first entry >= key: the lowest id of that piece */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (cmp_ref(&sorted[mid], &key) < 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n && sorted[lo].n == len && !memcmp(sorted[lo].s, s, len)) return sorted[lo].id;
    return -1;
}

/* Every (left, right) split of every piece a merge can produce, in rank
 * order. *out is the caller's (wmat__free). */
static int merges_build(const wmat_tokenizer *t, const hf_vocab *v, hf_merge **out, int *n_out)
{
    *out = NULL;
    *n_out = 0;
    piece_ref *sorted = wmat__malloc((size_t)v->n * sizeof *sorted);
    size_t cap = 1024, n = 0;
    hf_merge *m = wmat__malloc(cap * sizeof *m);
    if (!sorted || !m) goto nomem;
    int ns = 0;
    for (int i = 0; i < v->n; i++)
        if (v->key[i] && !v->special[i]) {
            size_t len;
            const char *p = wmat_tokenizer_piece(t, i, &len);
            sorted[ns++] = (piece_ref){p, len, i};
        }
    qsort(sorted, (size_t)ns, sizeof *sorted, cmp_ref);
    for (int k = 0; k < ns; k++) {
        const piece_ref *pc = &sorted[k];
        float score = wmat_tokenizer_score(t, pc->id);
        if (!(score > MIN_SCORE) || (k > 0 && sorted[k - 1].n == pc->n && !memcmp(sorted[k - 1].s, pc->s, pc->n)))
            continue;
        for (size_t cut = 1; cut < pc->n; cut++) {
            if (((unsigned char)pc->s[cut] & 0xC0) == 0x80) continue; /* inside a character */
            int l = find_piece(sorted, ns, pc->s, cut);
            if (l < 0) continue;
            int r = find_piece(sorted, ns, pc->s + cut, pc->n - cut);
            if (r < 0) continue;
            if (n == cap) {
                hf_merge *g = wmat__realloc(m, 2 * cap * sizeof *g);
                if (!g) goto nomem;
                m = g;
                cap *= 2;
            }
            m[n++] = (hf_merge){score, (uint32_t)cut, pc->id, l, r};
        }
    }
    if (n > INT32_MAX) goto nomem;
    qsort(m, n, sizeof *m, cmp_merge);
    wmat__free(sorted);
    *out = m;
    *n_out = (int)n;
    return WMAT_OK;
nomem:
    wmat__free(sorted);
    wmat__free(m);
    return wmat_set_error(WMAT_ERR_NOMEM, "tokenizer.json: out of memory for the merges of %d tokens", v->n);
}

/* ------------------------------------------------------------ JSON */

/* cJSON calls that allocate return NULL on failure; `ok` collects them. */
static cJSON *add(cJSON *obj, const char *key, cJSON *item, bool *ok)
{
    if (!item) {
        *ok = false;
        return NULL;
    }
    if (!(key ? cJSON_AddItemToObject(obj, key, item) : cJSON_AddItemToArray(obj, item))) {
        cJSON_Delete(item);
        *ok = false;
        return NULL;
    }
    return item;
}

static cJSON *replace_step(const char *from, const char *to, bool *ok)
{
    cJSON *o = cJSON_CreateObject(), *pat = cJSON_CreateObject();
    if (!o || !pat) {
        cJSON_Delete(o);
        cJSON_Delete(pat);
        *ok = false;
        return NULL;
    }
    add(o, "type", cJSON_CreateString("Replace"), ok);
    add(pat, "String", cJSON_CreateString(from), ok);
    add(o, "pattern", pat, ok);
    add(o, "content", cJSON_CreateString(to), ok);
    return o;
}

static cJSON *typed(const char *type, bool *ok)
{
    cJSON *o = cJSON_CreateObject();
    if (o) add(o, "type", cJSON_CreateString(type), ok);
    else *ok = false;
    return o;
}

/* {"SpecialToken"|"Sequence": {"id": id, "type_id": type_id}} */
static cJSON *template_piece(const char *kind, const char *id, int type_id, bool *ok)
{
    cJSON *o = cJSON_CreateObject(), *in = cJSON_CreateObject();
    if (!o || !in) {
        cJSON_Delete(o);
        cJSON_Delete(in);
        *ok = false;
        return NULL;
    }
    add(in, "id", cJSON_CreateString(id), ok);
    add(in, "type_id", cJSON_CreateNumber(type_id), ok);
    add(o, kind, in, ok);
    return o;
}

/* BOS before each sequence, as LlamaTokenizerFast's post-processor. */
static cJSON *post_processor(const hf_vocab *v, bool *ok)
{
    if (v->bos < 0 || !v->key[v->bos]) return cJSON_CreateNull();
    const char *bos = v->key[v->bos];
    cJSON *o = typed("TemplateProcessing", ok);
    if (!o) return NULL;
    cJSON *single = add(o, "single", cJSON_CreateArray(), ok), *pair = add(o, "pair", cJSON_CreateArray(), ok);
    if (single) {
        add(single, NULL, template_piece("SpecialToken", bos, 0, ok), ok);
        add(single, NULL, template_piece("Sequence", "A", 0, ok), ok);
    }
    if (pair) {
        add(pair, NULL, template_piece("SpecialToken", bos, 0, ok), ok);
        add(pair, NULL, template_piece("Sequence", "A", 0, ok), ok);
        add(pair, NULL, template_piece("SpecialToken", bos, 1, ok), ok);
        add(pair, NULL, template_piece("Sequence", "B", 1, ok), ok);
    }
    cJSON *st = add(o, "special_tokens", cJSON_CreateObject(), ok);
    cJSON *e = st ? add(st, bos, cJSON_CreateObject(), ok) : NULL;
    if (e) {
        add(e, "id", cJSON_CreateString(bos), ok);
        int ids[1] = {v->bos};
        add(e, "ids", cJSON_CreateIntArray(ids, 1), ok);
        const char *toks[1] = {bos};
        add(e, "tokens", cJSON_CreateStringArray(toks, 1), ok);
    }
    return o;
}

static cJSON *added_token(const hf_vocab *v, int id, bool *ok)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        *ok = false;
        return NULL;
    }
    add(o, "id", cJSON_CreateNumber(id), ok);
    add(o, "content", cJSON_CreateString(v->key[id]), ok);
    add(o, "single_word", cJSON_CreateFalse(), ok);
    add(o, "lstrip", cJSON_CreateFalse(), ok);
    add(o, "rstrip", cJSON_CreateFalse(), ok);
    add(o, "normalized", cJSON_CreateFalse(), ok);
    add(o, "special", cJSON_CreateTrue(), ok);
    return o;
}

/* The printed text, copied into wmat's allocator (fault injection sees it). */
static int print_json(cJSON *root, const char *what, char **out, size_t *len)
{
    char *text = cJSON_Print(root);
    if (!text) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    size_t n = strlen(text);
    *out = wmat__malloc(n + 2);
    if (!*out) {
        cJSON_free(text);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    }
    memcpy(*out, text, n);
    (*out)[n] = '\n';
    (*out)[n + 1] = '\0';
    *len = n + 1;
    cJSON_free(text);
    return WMAT_OK;
}

int wmat__hf_tokenizer_json(const wmat_tokenizer *t, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!t || wmat_tokenizer_vocab_size(t) <= 0)
        return wmat_set_error(WMAT_ERR_INVALID, "tokenizer.json: no vocabulary");
    hf_vocab v;
    int rc = vocab_build(t, &v);
    if (rc) return rc;
    hf_merge *mg = NULL;
    int n_merges = 0;
    char *pair = NULL;
    cJSON *root = NULL;
    if ((rc = merges_build(t, &v, &mg, &n_merges))) goto done;

    bool ok = true;
    root = cJSON_CreateObject();
    if (!root) {
        ok = false;
        goto print;
    }
    add(root, "version", cJSON_CreateString("1.0"), &ok);
    add(root, "truncation", cJSON_CreateNull(), &ok);
    add(root, "padding", cJSON_CreateNull(), &ok);
    cJSON *added = add(root, "added_tokens", cJSON_CreateArray(), &ok);
    for (int i = 0; i < v.n && added; i++)
        if (v.special[i]) add(added, NULL, added_token(&v, i, &ok), &ok);

    /* SentencePiece's dummy prefix and spaces. Without a " " piece run.c
     * falls back to the byte <0x20> for the prefix and every space, which a
     * plain " " (absent from the vocabulary) also gives. */
    cJSON *norm = add(root, "normalizer", typed("Sequence", &ok), &ok);
    cJSON *steps = norm ? add(norm, "normalizers", cJSON_CreateArray(), &ok) : NULL;
    if (steps) {
        cJSON *pre = add(steps, NULL, typed("Prepend", &ok), &ok);
        if (pre) add(pre, "prepend", cJSON_CreateString(v.space_piece ? SP : " "), &ok);
        if (v.space_piece) add(steps, NULL, replace_step(" ", SP, &ok), &ok);
    }
    add(root, "pre_tokenizer", cJSON_CreateNull(), &ok);
    add(root, "post_processor", post_processor(&v, &ok), &ok);
    cJSON *dec = add(root, "decoder", typed("Sequence", &ok), &ok);
    cJSON *dsteps = dec ? add(dec, "decoders", cJSON_CreateArray(), &ok) : NULL;
    if (dsteps) {
        add(dsteps, NULL, replace_step(SP, " ", &ok), &ok);
        add(dsteps, NULL, typed("ByteFallback", &ok), &ok);
        add(dsteps, NULL, typed("Fuse", &ok), &ok);
        cJSON *strip = add(dsteps, NULL, typed("Strip", &ok), &ok);
        if (strip) {
            add(strip, "content", cJSON_CreateString(" "), &ok);
            add(strip, "start", cJSON_CreateNumber(1), &ok);
            add(strip, "stop", cJSON_CreateNumber(0), &ok);
        }
    }

    cJSON *model = add(root, "model", typed("BPE", &ok), &ok);
    if (!model) goto print;
    add(model, "dropout", cJSON_CreateNull(), &ok);
    add(model, "unk_token", v.unk >= 0 && v.key[v.unk] ? cJSON_CreateString(v.key[v.unk]) : cJSON_CreateNull(), &ok);
    add(model, "continuing_subword_prefix", cJSON_CreateNull(), &ok);
    add(model, "end_of_word_suffix", cJSON_CreateNull(), &ok);
    /* run.c gives one unknown per missing byte: no fusing */
    add(model, "fuse_unk", cJSON_CreateFalse(), &ok);
    add(model, "byte_fallback", cJSON_CreateTrue(), &ok);
    /* run.c merges a word even when the whole word is a piece */
    add(model, "ignore_merges", cJSON_CreateFalse(), &ok);
    cJSON *vocab = add(model, "vocab", cJSON_CreateObject(), &ok);
    for (int i = 0; i < v.n && vocab && ok; i++)
        if (v.key[i]) add(vocab, v.key[i], cJSON_CreateNumber(i), &ok);
    /* "left right": no key holds a space (they are spelled U+2581), so the
     * one-string form that every tokenizers version reads is unambiguous. */
    cJSON *merges = add(model, "merges", cJSON_CreateArray(), &ok);
    size_t pair_cap = 0;
    for (int k = 0; k < n_merges && merges && ok; k++) {
        const char *a = v.key[mg[k].l], *b = v.key[mg[k].r];
        size_t la = strlen(a), lb = strlen(b);
        if (la + lb + 2 > pair_cap) {
            wmat__free(pair);
            pair_cap = 2 * (la + lb + 2);
            pair = wmat__malloc(pair_cap);
            if (!pair) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "tokenizer.json: out of memory");
                goto done;
            }
        }
        memcpy(pair, a, la);
        pair[la] = ' ';
        memcpy(pair + la + 1, b, lb + 1);
        add(merges, NULL, cJSON_CreateString(pair), &ok);
    }
print:
    if (!ok) rc = wmat_set_error(WMAT_ERR_NOMEM, "tokenizer.json: out of memory");
    else rc = print_json(root, "tokenizer.json", out, len);
done:
    cJSON_Delete(root);
    wmat__free(pair);
    wmat__free(mg);
    vocab_free(&v);
    return rc;
}

int wmat__hf_tokenizer_config_json(const wmat_tokenizer *t, int max_len, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!t || wmat_tokenizer_vocab_size(t) <= 0)
        return wmat_set_error(WMAT_ERR_INVALID, "tokenizer_config.json: no vocabulary");
    hf_vocab v;
    int rc = vocab_build(t, &v);
    if (rc) return rc;
    bool ok = true;
    cJSON *root = cJSON_CreateObject();
    if (!root) {
        ok = false;
        goto print;
    }
    bool bos = v.bos >= 0 && v.key[v.bos], eos = v.eos >= 0 && v.key[v.eos], unk = v.unk >= 0 && v.key[v.unk];
    add(root, "add_bos_token", cJSON_CreateBool(bos), &ok);
    add(root, "add_eos_token", cJSON_CreateFalse(), &ok);
    cJSON *dec = add(root, "added_tokens_decoder", cJSON_CreateObject(), &ok);
    for (int i = 0; i < v.n && dec && ok; i++)
        if (v.special[i]) {
            char id[16];
            snprintf(id, sizeof id, "%d", i);
            cJSON *e = add(dec, id, added_token(&v, i, &ok), &ok);
            if (e) cJSON_DeleteItemFromObject(e, "id");
        }
    add(root, "bos_token", bos ? cJSON_CreateString(v.key[v.bos]) : cJSON_CreateNull(), &ok);
    add(root, "eos_token", eos ? cJSON_CreateString(v.key[v.eos]) : cJSON_CreateNull(), &ok);
    add(root, "unk_token", unk ? cJSON_CreateString(v.key[v.unk]) : cJSON_CreateNull(), &ok);
    add(root, "pad_token", cJSON_CreateNull(), &ok);
    add(root, "clean_up_tokenization_spaces", cJSON_CreateFalse(), &ok);
    if (max_len > 0) add(root, "model_max_length", cJSON_CreateNumber(max_len), &ok);
    /* tokenizer.json as it is: LlamaTokenizerFast would rebuild parts of
     * the pipeline from its own settings. */
    add(root, "tokenizer_class", cJSON_CreateString("PreTrainedTokenizerFast"), &ok);
print:
    if (!ok) rc = wmat_set_error(WMAT_ERR_NOMEM, "tokenizer_config.json: out of memory");
    else rc = print_json(root, "tokenizer_config.json", out, len);
    cJSON_Delete(root);
    vocab_free(&v);
    return rc;
}
