/* test_fuzz_smoke.c — a bounded run of the request-parser fuzzer in the normal test suite.
 * Runs build/fuzz/fuzz_request (made by `make fuzz`, which `make test` runs) for
 * VIGIL_FUZZ_SECONDS (default 20) from the seed corpus tests/fuzz/corpus, and fails if the
 * fuzzer reports a crash, a leak, undefined behaviour or a broken invariant, or does not run.
 * The seed corpus is never written to: new inputs go to a scratch directory; a crashing input
 * is kept under build/fuzz/artifacts/ to reproduce with `build/fuzz/fuzz_request FILE`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SEED_DIR "tests/fuzz/corpus"
#define DICT     "tests/fuzz/fuzz_request.dict"

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (buf)
        buf[got] = '\0';
    return buf;
}

static void print_tail(const char *log, int lines)
{
    const char *p = log + strlen(log);
    for (int n = 0; p > log && n <= lines; p--)
        if (p[-1] == '\n')
            n++;
    print_error("---- fuzzer output (tail) ----\n%s\n------------------------------\n", p);
}

static void test_fuzz_request_smoke(void **state)
{
    (void)state;
    const char *fuzz_dir = getenv("VIGIL_FUZZ_BUILD");
    if (!fuzz_dir || !*fuzz_dir)
        fuzz_dir = "build/fuzz";
    char bin[512];
    snprintf(bin, sizeof bin, "%s/fuzz_request", fuzz_dir);
    if (access(bin, X_OK) != 0)
        fail_msg("%s is missing (%s): build it with `make fuzz` (needs clang and "
                 "libclang-rt-14-dev; `make test` does this first)", bin, strerror(errno));
    int seeds = count_files(SEED_DIR);
    if (seeds <= 0)
        fail_msg("the seed corpus %s is missing or empty; run from the repo root", SEED_DIR);
    int seconds = 20;
    const char *env = getenv("VIGIL_FUZZ_SECONDS");
    if (env && atoi(env) > 0)
        seconds = atoi(env);

    char work[] = "/tmp/vigil-fuzz-XXXXXX";
    assert_non_null(mkdtemp(work));
    char corpus[600], log_path[600], artifacts[600];
    snprintf(corpus, sizeof corpus, "%s/corpus", work);
    snprintf(log_path, sizeof log_path, "%s/fuzz.log", work);
    snprintf(artifacts, sizeof artifacts, "%s/artifacts", fuzz_dir);
    assert_int_equal(mkdir(corpus, 0700), 0);
    if (mkdir(artifacts, 0755) != 0 && errno != EEXIST)
        fail_msg("cannot create %s: %s", artifacts, strerror(errno));

    char a_time[64], a_prefix[700], a_dict[600];
    snprintf(a_time, sizeof a_time, "-max_total_time=%d", seconds);
    snprintf(a_prefix, sizeof a_prefix, "-artifact_prefix=%s/", artifacts);
    snprintf(a_dict, sizeof a_dict, "-dict=%s", DICT);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        /* The first corpus directory receives new inputs: the scratch one, not the seeds. */
        execl(bin, bin, a_time, "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
              a_prefix, a_dict, corpus, SEED_DIR, (char *)NULL);
        _exit(127);
    }
    /* A hard deadline well past max_total_time, in case the fuzzer hangs. */
    time_t deadline = time(NULL) + seconds + 120;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            fail_msg("waitpid: %s", strerror(errno));
        if (time(NULL) > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            char *log = read_file(log_path);
            if (log)
                print_tail(log, 40);
            free(log);
            remove_tree(work);
            fail_msg("the fuzzer did not finish within %d s", seconds + 120);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }

    char *log = read_file(log_path);
    assert_non_null(log);
    static const char *const bad[] = {
        "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
        "ERROR: libFuzzer", "deadly signal", "check failed", "Test unit written to",
    };
    const char *found = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0] && !found; i++)
        if (strstr(log, bad[i]))
            found = bad[i];
    long runs = -1;
    const char *done = strstr(log, "Done ");
    if (done)
        runs = strtol(done + 5, NULL, 10);
    bool exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (found || !exited_ok || runs < 1000) {
        print_tail(log, 40);
        free(log);
        remove_tree(work);
        if (found)
            fail_msg("the fuzzer reported \"%s\"; the input is in %s/ (reproduce: %s FILE)",
                     found, artifacts, bin);
        if (!exited_ok)
            fail_msg("the fuzzer exited with %s %d", WIFEXITED(status) ? "status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        fail_msg("the fuzzer ran only %ld inputs in %d s", runs, seconds);
    }
    print_message("fuzz_request: %ld runs in %d s from %d seeds, %d new inputs, no findings\n",
                  runs, seconds, seeds, count_files(corpus));
    free(log);
    remove_tree(work);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fuzz_request_smoke),
    };
    return cmocka_run_group_tests_name("fuzz_smoke", tests, NULL, NULL);
}
