/*
 * json.c - a small, bounds-checked JSON reader. Every read goes through the parser's
 * cursor, which never passes `end`; nesting is limited to JSON_MAX_DEPTH.
 */
#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK_MIN 4096u
#define JSON_MAX_FILE (64u * 1024u * 1024u) /* data files are small; refuse anything huge */
#define HEX_DIGITS_IN_ESCAPE 4u

/* ------------------------------------------------------------------------------------ */
/* Arena                                                                                 */
/* ------------------------------------------------------------------------------------ */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[]; /* aligned storage */
} chunk;

struct json_doc {
    chunk *chunks;
    json_node *root;
};

static void *arena_alloc(json_doc *doc, size_t size)
{
    const size_t align = sizeof(max_align_t);
    size = (size + align - 1) / align * align;
    chunk *c = doc->chunks;
    if (c == NULL || c->cap - c->used < size) {
        const size_t cap = size > ARENA_CHUNK_MIN ? size : ARENA_CHUNK_MIN;
        c = malloc(sizeof *c + cap);
        if (c == NULL)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = doc->chunks;
        doc->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

void json_free(json_doc *doc)
{
    if (doc == NULL)
        return;
    for (chunk *c = doc->chunks, *next; c != NULL; c = next) {
        next = c->next;
        free(c);
    }
    free(doc);
}

/* ------------------------------------------------------------------------------------ */
/* Parser                                                                                */
/* ------------------------------------------------------------------------------------ */

typedef struct parser {
    const char *start, *p, *end;
    json_doc *doc;
    unsigned depth;
    char *err;
    size_t err_len;
} parser;

__attribute__((format(printf, 2, 3))) static bool parse_error(parser *ps, const char *fmt, ...)
{
    if (ps->err_len == 0)
        return false;
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(ps->err, ps->err_len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < ps->err_len)
        snprintf(ps->err + n, ps->err_len - (size_t)n, " at byte %zu",
                 (size_t)(ps->p - ps->start));
    ps->err_len = 0; /* keep the first, innermost message */
    return false;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool literal(parser *ps, const char *word)
{
    const size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return parse_error(ps, "invalid literal");
    ps->p += n;
    return true;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool read_hex4(parser *ps, unsigned *out)
{
    if ((size_t)(ps->end - ps->p) < HEX_DIGITS_IN_ESCAPE)
        return parse_error(ps, "truncated \\u escape");
    unsigned v = 0;
    for (unsigned i = 0; i < HEX_DIGITS_IN_ESCAPE; i++) {
        const int d = hex_value(ps->p[i]);
        if (d < 0)
            return parse_error(ps, "bad \\u escape");
        v = v << 4 | (unsigned)d;
    }
    ps->p += HEX_DIGITS_IN_ESCAPE;
    *out = v;
    return true;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string at the cursor (which is on the opening quote), decoded into the arena. The
 * decoded form is never longer than the source: every escape is at least as long as
 * the UTF-8 it produces. */
static bool parse_string(parser *ps, const char **out, size_t *out_len)
{
    ps->p++; /* opening quote */
    const char *scan = ps->p;
    while (scan < ps->end && *scan != '"')
        scan += *scan == '\\' && scan + 1 < ps->end ? 2 : 1;
    if (scan >= ps->end)
        return parse_error(ps, "unterminated string");
    char *buf = arena_alloc(ps->doc, (size_t)(scan - ps->p) + 1);
    if (buf == NULL)
        return parse_error(ps, "out of memory");
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        const unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20)
            return parse_error(ps, "control character in string");
        if (c != '\\') {
            buf[n++] = (char)c;
            ps->p++;
            continue;
        }
        if (ps->end - ps->p < 2)
            return parse_error(ps, "truncated escape");
        const char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(ps, &cp))
                return false;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                    return parse_error(ps, "unpaired surrogate");
                ps->p += 2;
                if (!read_hex4(ps, &lo))
                    return false;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return parse_error(ps, "unpaired surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return parse_error(ps, "unpaired surrogate");
            }
            if (cp == 0)
                return parse_error(ps, "\\u0000 is not supported"); /* strings are C strings */
            n += put_utf8(buf + n, cp);
            break;
        }
        default:
            return parse_error(ps, "bad escape");
        }
    }
    ps->p++; /* closing quote: the scan above proved it is there */
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return true;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool parse_number(parser *ps, json_node *node)
{
    const char *s = ps->p;
    if (ps->p < ps->end && *ps->p == '-')
        ps->p++;
    if (ps->p >= ps->end || !is_digit(*ps->p))
        return parse_error(ps, "bad number");
    if (*ps->p == '0')
        ps->p++;
    else
        while (ps->p < ps->end && is_digit(*ps->p))
            ps->p++;
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (ps->p >= ps->end || !is_digit(*ps->p))
            return parse_error(ps, "bad fraction");
        while (ps->p < ps->end && is_digit(*ps->p))
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || !is_digit(*ps->p))
            return parse_error(ps, "bad exponent");
        while (ps->p < ps->end && is_digit(*ps->p))
            ps->p++;
    }
    const size_t n = (size_t)(ps->p - s);
    char *text = arena_alloc(ps->doc, n + 1);
    if (text == NULL)
        return parse_error(ps, "out of memory");
    memcpy(text, s, n);
    text[n] = '\0';
    node->type = JSON_NUMBER;
    node->text = text;
    node->text_len = n;
    return true;
}

static bool parse_value(parser *ps, json_node *node);

/* Elements of an array or members of an object, after the opening bracket. */
static bool parse_container(parser *ps, json_node *node, bool is_object)
{
    const char close = is_object ? '}' : ']';
    if (++ps->depth > JSON_MAX_DEPTH)
        return parse_error(ps, "nesting too deep");
    ps->p++;
    node->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    json_node **tail = &node->child;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return true;
    }
    for (;;) {
        json_node *item = arena_alloc(ps->doc, sizeof *item);
        if (item == NULL)
            return parse_error(ps, "out of memory");
        memset(item, 0, sizeof *item);
        skip_ws(ps);
        if (is_object) {
            size_t key_len;
            if (ps->p >= ps->end || *ps->p != '"')
                return parse_error(ps, "expected member name");
            if (!parse_string(ps, &item->key, &key_len))
                return false;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return parse_error(ps, "expected ':'");
            ps->p++;
        }
        if (!parse_value(ps, item))
            return false;
        *tail = item;
        tail = &item->next;
        node->count++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return true;
        }
        return parse_error(ps, "expected ',' or '%c'", close);
    }
}

static bool parse_value(parser *ps, json_node *node)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return parse_error(ps, "unexpected end of input");
    switch (*ps->p) {
    case '{': return parse_container(ps, node, true);
    case '[': return parse_container(ps, node, false);
    case '"':
        node->type = JSON_STRING;
        return parse_string(ps, &node->text, &node->text_len);
    case 't':
        node->type = JSON_BOOL;
        node->boolean = true;
        return literal(ps, "true");
    case 'f':
        node->type = JSON_BOOL;
        return literal(ps, "false");
    case 'n':
        node->type = JSON_NULL;
        return literal(ps, "null");
    default:
        return parse_number(ps, node);
    }
}

json_doc *json_parse(const char *text, size_t len, char *err, size_t err_len)
{
    json_doc *doc = calloc(1, sizeof *doc);
    if (doc == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    parser ps = { text, text, text + len, doc, 0, err, err_len };
    doc->root = arena_alloc(doc, sizeof *doc->root);
    if (doc->root == NULL) {
        snprintf(err, err_len, "out of memory");
        json_free(doc);
        return NULL;
    }
    memset(doc->root, 0, sizeof *doc->root);
    bool ok = parse_value(&ps, doc->root);
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            ok = parse_error(&ps, "trailing characters");
    }
    if (!ok) {
        json_free(doc);
        return NULL;
    }
    return doc;
}

json_doc *json_load_file(const char *path, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap != 0 ? cap * 2 : ARENA_CHUNK_MIN;
            char *grown = cap <= JSON_MAX_FILE ? realloc(buf, cap) : NULL;
            if (grown == NULL) {
                snprintf(err, err_len, "%s: too large or out of memory", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = grown;
        }
        const size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    const bool read_error = ferror(f) != 0;
    if (fclose(f) != 0 || read_error) {
        snprintf(err, err_len, "%s: read error", path);
        free(buf);
        return NULL;
    }
    json_doc *doc = json_parse(buf, len, err, err_len);
    free(buf);
    return doc;
}

const json_node *json_root(const json_doc *doc) { return doc->root; }

const json_node *json_get(const json_node *obj, const char *key)
{
    if (obj == NULL || obj->type != JSON_OBJECT)
        return NULL;
    for (const json_node *m = obj->child; m != NULL; m = m->next)
        if (strcmp(m->key, key) == 0)
            return m;
    return NULL;
}

bool json_get_u64(const json_node *node, uint64_t *out)
{
    if (node == NULL || node->type != JSON_NUMBER || node->text_len == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < node->text_len; i++) {
        const char c = node->text[i];
        if (!is_digit(c))
            return false; /* sign, fraction or exponent: not a plain count */
        const uint64_t d = (uint64_t)(c - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

bool json_get_bool(const json_node *node, bool *out)
{
    if (node == NULL || node->type != JSON_BOOL)
        return false;
    *out = node->boolean;
    return true;
}

const char *json_get_string(const json_node *node)
{
    return node != NULL && node->type == JSON_STRING ? node->text : NULL;
}

bool json_is_null(const json_node *node) { return node != NULL && node->type == JSON_NULL; }
