/* proto_internal.h — helpers shared by the protocol/ sources; not part of the public contract. */
#ifndef VIGIL_PROTOCOL_PROTO_INTERNAL_H
#define VIGIL_PROTOCOL_PROTO_INTERNAL_H

#include "protocol/protocol.h"

/* Length of the valid UTF-8 sequence at s[0..n) (n >= 1), 0 if invalid, or -k if s holds a
 * valid but incomplete prefix of k bytes (n too short). */
int proto_utf8_seq(const unsigned char *s, size_t n);

/* Length of a UTF-8-safe cut of s[0..n) to at most max bytes (never splits a sequence). */
size_t proto_utf8_cut(const char *s, size_t n, size_t max);

/* malloc'ed NUL-terminated copy of s[0..n) with every byte that is not part of a valid UTF-8
 * sequence (and every NUL) replaced by U+FFFD. NULL on OOM. */
char *proto_utf8_sanitize(const char *s, size_t n);

/* Decodes RFC 4648 base64 (standard alphabet, padding optional, ASCII whitespace ignored).
 * Returns 0 with *out malloc'ed (never NULL, even for 0 bytes), -1 for invalid input and -2
 * when the result would exceed max_out; err says why. */
int proto_base64_decode(const char *s, size_t n, size_t max_out, unsigned char **out,
                        size_t *out_len, char *err, size_t errlen);

/* true when scheme appears in the comma-separated list (ASCII case-insensitive, spaces around
 * items ignored). */
bool proto_scheme_in_list(const char *scheme, const char *list);

/* Current wall time in Unix seconds. */
double proto_now_epoch(void);

#endif
