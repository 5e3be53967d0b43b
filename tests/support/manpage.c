/* manpage.c — options named by --help must appear in the man page. */
#include "tests/support/manpage.h"

#include <stdio.h>
#include <string.h>

int manpage_check_options(const char *help, const char *man, char *missing, size_t size)
{
    int found = 0;
    for (const char *p = strstr(help, "--"); p; p = strstr(p + 2, "--")) {
        size_t n = 2;
        while (p[n] == '-' || (p[n] >= 'a' && p[n] <= 'z'))
            n++;
        /* "--" alone, or inside a word ("a--b"), is not an option. */
        if (n <= 3 || (p > help && p[-1] != ' ' && p[-1] != '(' && p[-1] != ','))
            continue;
        char roff[128];
        size_t o = 0;
        for (size_t i = 0; i < n && o + 3 < sizeof roff; i++) {
            if (p[i] == '-')
                roff[o++] = '\\';
            roff[o++] = p[i];
        }
        roff[o] = '\0';
        if (!strstr(man, roff)) {
            snprintf(missing, size, "%.*s", (int)n, p);
            return -1;
        }
        found++;
    }
    return found;
}
