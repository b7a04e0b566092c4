/* Typed key=value parameters described by a schema: the one place that
 * parses, checks and documents the settings of registered methods (and
 * anything else that wants a table of options). A schema is an array of
 * rows ending with a row whose name is NULL; the CLI turns it into flags
 * (--key V, --key=V, a bool as a bare --key or its negation) and help text,
 * and the library reads the same values as "key=value" text.
 *
 * Keys are lower case with '_' between words ("act_order"); wherever a key
 * is looked up, '-' and '_' are the same letter, so the flag is --act-order.
 * Every error names the key, the value given and what is allowed. */
#ifndef WMAT_CORE_PARAMS_H
#define WMAT_CORE_PARAMS_H

#include "internal.h"

typedef enum {
    WMAT_PARAM_INT = 0,
    WMAT_PARAM_FLOAT,
    WMAT_PARAM_BOOL,   /* true/false, 1/0, yes/no, on/off; a bare flag is true */
    WMAT_PARAM_ENUM,   /* one of choices ("stage|block|off"); the value is its index */
    WMAT_PARAM_STRING,
} wmat_param_type;

typedef struct {
    const char *name;    /* the key; NULL ends a schema */
    wmat_param_type type;
    const char *def;     /* default, written as a value ("4", "0.01", "false", "stage", "") */
    double min, max;     /* INT and FLOAT: the inclusive range */
    const char *choices; /* ENUM: '|'-separated names */
    const char *help;    /* one line, no trailing period */
    const char *neg;     /* BOOL, optional: a flag that sets it false ("asym" for "sym") */
} wmat_param_spec;

typedef struct {
    int64_t i;  /* INT; BOOL 0/1; ENUM the index of the choice */
    double f;   /* FLOAT (never NaN or infinite) */
    char *s;    /* STRING, and an ENUM's choice name (owned); NULL otherwise */
    int set;    /* 1 once given explicitly (the default otherwise) */
} wmat_param_value;

/* Values of one schema. The schema is not copied: it must outlive the set. */
typedef struct {
    const wmat_param_spec *spec;
    int n;                  /* rows of spec */
    wmat_param_value *v;    /* n values, owned */
} wmat_pset;

int wmat__params_count(const wmat_param_spec *spec);
/* Row index of key in spec ('-' == '_'); len = strlen(key) or a prefix
 * length; -1 when absent. */
int wmat__params_find(const wmat_param_spec *spec, const char *key, size_t len);

/* Parse text as a value of row s into *out (out->s malloc'd for STRING);
 * WMAT_ERR_INVALID naming the key, the text and the allowed range or
 * choices when it is malformed, NaN/infinite, or out of range. */
int wmat__param_parse(const wmat_param_spec *s, const char *text, wmat_param_value *out);
/* Write a value of row s as text that parses back to the same value. */
int wmat__param_format(const wmat_param_spec *s, const wmat_param_value *v, char *buf, size_t n);
/* The allowed values of row s: "2..8", "stage|block|off", "true|false", "text". */
int wmat__param_range(const wmat_param_spec *s, char *buf, size_t n);

/* Fill ps with the defaults of spec. An invalid default is a schema bug,
 * reported like a bad value (WMAT_ERR_INVALID). Free with wmat__pset_free. */
int wmat__pset_init(wmat_pset *ps, const wmat_param_spec *spec);
void wmat__pset_free(wmat_pset *ps);

/* Set key (WMAT_ERR_INVALID for a key not in the schema, listing the keys,
 * or a bad value). A bool key also takes its negation's name with value
 * NULL ("asym" sets sym false); value NULL on a bool sets it true. */
int wmat__pset_set(wmat_pset *ps, const char *key, const char *value);
/* Apply "key=value" items separated by sep (a bool item may be a bare key
 * or its negation). skip_unknown: keys not in the schema are passed over
 * (text meant for several schemas); otherwise they are an error. Values
 * cannot contain sep. */
int wmat__pset_parse_kv(wmat_pset *ps, const char *text, char sep, int skip_unknown);
/* One command-line flag: arg is "--key", "--key=value" or a bool's
 * "--neg"; next is the argument after it (or NULL), taken as the value when
 * the flag has no '=' and is not a bool. Returns 0 when arg is not a flag of
 * the schema, 1 or 2 (argv entries used) when applied, a negative status on
 * a bad value, a missing value, or a bool given both ways (--sym --asym). */
int wmat__pset_flag(wmat_pset *ps, const char *arg, const char *next);
/* wmat__pset_flag over argv[0..argc): used[i] = 1 for the entries taken.
 * Other arguments are left for the caller. */
int wmat__pset_parse_args(wmat_pset *ps, int argc, char **argv, unsigned char *used);

/* Typed reads of key (which must be in the schema: a programmer error
 * otherwise, answered with 0 / NULL). */
int64_t wmat__pset_int(const wmat_pset *ps, const char *key);
double wmat__pset_float(const wmat_pset *ps, const char *key);
const char *wmat__pset_str(const wmat_pset *ps, const char *key); /* STRING, or an ENUM's choice */
int wmat__pset_is_set(const wmat_pset *ps, const char *key);
int wmat__pset_has(const wmat_pset *ps, const char *key);
/* 1 when key is a key of the schema or a bool's negation ('-' == '_'). */
int wmat__pset_knows(const wmat_pset *ps, const char *key);

/* "key=value" of every value (only_set: of those given explicitly), joined
 * by sep, into buf; returns the length it needs (like snprintf). */
int wmat__pset_format(const wmat_pset *ps, int only_set, char sep, char *buf, size_t n);

/* Help text, one line per row: as_flags 1 gives "  --act-order  help
 * (default ...)" with the flag spelling, 0 gives "  act_order=true|false ...".
 * Returns the length it needs (like snprintf). */
int wmat__params_help(const wmat_param_spec *spec, int as_flags, char *buf, size_t n);

/* Add to dst (cap rows, *n used; not NULL-terminated) the rows of src whose
 * names are new. A name already there with another type, range or choices
 * is WMAT_ERR_INVALID (one key, one meaning), as is running out of room. */
int wmat__params_merge(wmat_param_spec *dst, int cap, int *n, const wmat_param_spec *src);

#endif
