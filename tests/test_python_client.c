/* test_python_client.c — runs the Python client's own tests (clients/python/tests, unittest)
 * with Debian's /usr/bin/python3 (which has pyzmq) against the real vigild of this build tree
 * ($VIGIL_BUILD, which the Python tests read too). One cmocka test per test module; a module
 * fails when unittest fails, reports errors, or ran no test at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/media.h"

#define PYTHON "/usr/bin/python3"

/* Runs one module; returns its output (malloc'ed) and exit status. */
static char *run_module(const char *module, int *status)
{
    char cmd[1024];
    /* -B / PYTHONDONTWRITEBYTECODE: no __pycache__ in the source tree. -u: unbuffered, so the
     * log shows how far a hanging test got. */
    snprintf(cmd, sizeof cmd,
             "cd clients/python/tests && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=.. "
             "timeout --kill-after=10 900 " PYTHON " -B -u -m unittest -v %s 2>&1",
             module);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *out = NULL;
    size_t len = 0, cap = 0;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            out = realloc(out, cap);
            assert_non_null(out);
        }
        memcpy(out + len, buf, n);
        len += n;
        out[len] = '\0';
        fwrite(buf, 1, n, stdout);  /* the test log keeps unittest's own report */
    }
    fflush(stdout);
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    return out ? out : strdup("");
}

static void check_module(const char *module)
{
    if (access(PYTHON, X_OK) != 0)
        fail_msg(PYTHON " is missing: install python3 and python3-zmq (tools/install-deps.sh)");
    int status;
    char *out = run_module(module, &status);
    int ran = -1;
    const char *r = strstr(out, "\nRan ");
    if (r)
        sscanf(r, "\nRan %d test", &ran);
    bool ok = status == 0 && ran > 0 && strstr(out, "\nOK") != NULL;
    if (!ok)
        fail_msg("python -m unittest %s: exit %d, %d tests ran (see the output above)", module,
                 status, ran);
    free(out);
}

static void test_python_unit(void **state)
{
    (void)state;
    check_module("test_unit");
}

static void test_python_against_vigild(void **state)
{
    (void)state;
    check_module("test_client");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_unit),
        cmocka_unit_test(test_python_against_vigild),
    };
    return cmocka_run_group_tests_name("python_client", tests, NULL, NULL);
}
