/* manpage.h — test helper: are the options a program's --help names documented in its roff
 * man page? */
#ifndef VIGIL_TESTS_SUPPORT_MANPAGE_H
#define VIGIL_TESTS_SUPPORT_MANPAGE_H

#include <stddef.h>

/* Finds every long option ("--name", after a space, '(' or ',') in help and looks for it in
 * the roff text man (where '-' is written "\-"). Returns how many were found in man, or -1
 * with the first missing option in missing. */
int manpage_check_options(const char *help, const char *man, char *missing, size_t size);

#endif
