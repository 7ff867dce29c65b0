/*
 * json.h - a small, bounds-checked JSON reader (RFC 8259) for the peer's data files
 * (peers/scenario.json, peers/hostile-frames.json). Read-only tree in one arena.
 */
#ifndef SHMLINK_JSON_H
#define SHMLINK_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64u /* deeper documents are refused, so recursion stays bounded */

typedef enum json_type {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
} json_type;

typedef struct json_node {
    json_type type;
    const char *key;  /* member name when the node is an object member, else NULL */
    const char *text; /* string: decoded; number: the literal; NUL-terminated */
    size_t text_len;
    bool boolean;
    size_t count;            /* elements or members */
    struct json_node *child; /* first element or member */
    struct json_node *next;  /* next sibling */
} json_node;

typedef struct json_doc json_doc;

/* Parse `len` bytes. NULL on error, with a message (and byte offset) in err. */
json_doc *json_parse(const char *text, size_t len, char *err, size_t err_len);
/* Read and parse a whole file. */
json_doc *json_load_file(const char *path, char *err, size_t err_len);
const json_node *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* Member `key` of an object; NULL if `obj` is not an object or has no such member. */
const json_node *json_get(const json_node *obj, const char *key);
/* A non-negative integer literal that fits in 64 bits. */
bool json_get_u64(const json_node *node, uint64_t *out);
bool json_get_bool(const json_node *node, bool *out);
/* The decoded string, or NULL if node is not a string. */
const char *json_get_string(const json_node *node);
bool json_is_null(const json_node *node);

#endif
