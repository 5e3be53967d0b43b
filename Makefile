# vigil — build, test, bench, demo, install.
#   make            build everything (release-ish: -O2 -g)
#   make test       unit + integration tests, normally and under ASan+UBSan
#   make demo       install deps, build, run the built-in demo
#   make bench      benchmarks on real-shaped random-weight checkpoints
#   make install    PREFIX=/usr/local DESTDIR=

CC       ?= cc
PREFIX   ?= /usr/local
BUILD    ?= build
# Extra flags for one build flavour (the sanitizer build sets these).
SAN_FLAGS ?=
OPT      ?= -O2
PKGS     := libavformat libavdevice libavcodec libswscale libavutil libzmq libuv libcjson libpcre2-8 libutf8proc libsystemd cmocka
CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -march=native -pthread -fopenmp \
            -I. $(shell pkg-config --cflags $(PKGS)) $(SAN_FLAGS) $(EXTRA_CFLAGS)
LDLIBS   := $(shell pkg-config --libs $(PKGS)) -ldnnl -lm -pthread -fopenmp
LDFLAGS  := -Wl,--as-needed $(SAN_FLAGS)

# Layers, in data-flow order. Every .c file in a layer folder goes into libvigil.a except the
# program entry points listed in PROGRAM_MAINS.
LAYERS        := ingest model daemon protocol clients
PROGRAM_MAINS := daemon/vigild.c clients/vigil.c
LIB_SRCS      := $(filter-out $(PROGRAM_MAINS),$(wildcard $(addsuffix /*.c,$(LAYERS))))
LIB_OBJS      := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_SUPPORT  := $(wildcard tests/support/*.c)
TEST_SUPPORT_OBJS := $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)

TOOL_SRCS  := $(wildcard tools/*.c)
BENCH_SRCS := $(wildcard bench/*.c)
TEST_SRCS  := $(wildcard tests/test_*.c)
FUZZ_SRCS  := $(wildcard tests/fuzz/*.c)

PROGRAMS := $(patsubst %.c,$(BUILD)/bin/%,$(notdir $(PROGRAM_MAINS) $(TOOL_SRCS)))
PROGRAMS := $(subst _,-,$(PROGRAMS))
BENCHES  := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
TESTS    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))

.PHONY: all deps test unit-tests test-asan bench demo install clean fuzz soak
all: $(PROGRAMS) $(TESTS) $(BENCHES)

deps:
	@./tools/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libvigil.a: $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# Program names use dashes: tools/gen_checkpoint.c -> build/bin/vigil-gen-checkpoint is not
# implied; a tool's file name with underscores becomes the binary name with dashes.
define program_rule
$(BUILD)/bin/$(subst _,-,$(notdir $(basename $(1)))): $(BUILD)/obj/$(basename $(1)).o $(BUILD)/libvigil.a
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(LDLIBS)
endef
$(foreach p,$(PROGRAM_MAINS) $(TOOL_SRCS),$(eval $(call program_rule,$(p))))

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BUILD)/libvigil.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_SUPPORT_OBJS) $(BUILD)/libvigil.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Fuzzing: clang + libFuzzer, self-contained (own compiler, flags and object tree under
# build/fuzz/) so the gcc build is untouched. Every tests/fuzz/x.c becomes build/fuzz/x, linked
# with protocol/*.c compiled by clang. tests/test_fuzz_smoke.c runs build/fuzz/fuzz_request.
FUZZ_BUILD    := build/fuzz
FUZZ_CC       := clang
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer \
                 -pthread -I. $(shell pkg-config --cflags libcjson libzmq)
FUZZ_LIBS     := $(shell pkg-config --libs libcjson libzmq) -lm -pthread
FUZZ_LIB_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(wildcard protocol/*.c))
FUZZ_OBJS     := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(FUZZ_SRCS))
FUZZERS       := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRCS))

fuzz: $(FUZZERS)

$(FUZZ_LIB_OBJS) $(FUZZ_OBJS): $(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -MMD -MP -c $< -o $@

$(FUZZERS): $(FUZZ_BUILD)/%: $(FUZZ_BUILD)/obj/tests/fuzz/%.o $(FUZZ_LIB_OBJS)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

# Tests run twice: the normal build, then the ASan+UBSan build of the same tests.
ASAN_BUILD := build/asan
test: deps
	$(MAKE) all
	$(MAKE) fuzz
	$(MAKE) BUILD=$(ASAN_BUILD) OPT=-O1 SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" $(ASAN_BUILD)/libvigil.a $(patsubst $(BUILD)/%,$(ASAN_BUILD)/%,$(TESTS) $(PROGRAMS))
	./tests/run-tests.sh $(BUILD) $(ASAN_BUILD)

# The long run of the bounded tests inside `make test`: a stream through 400x its cache cap
# (test_daemon_longrun runs 15x in make test), and an hour-long fuzz campaign.
# (the fuzz smoke test runs 20 s in make test).
SOAK_CAPS ?= 400
SOAK_FUZZ_SECONDS ?= 3600
soak: deps all fuzz
	VIGIL_LONGRUN_CAPS=$(SOAK_CAPS) TEST_TIMEOUT=7200 TEST_FILTER=longrun ./tests/run-tests.sh $(BUILD)
	VIGIL_FUZZ_SECONDS=$(SOAK_FUZZ_SECONDS) TEST_TIMEOUT=7800 TEST_FILTER=fuzz_smoke ./tests/run-tests.sh $(BUILD)

unit-tests: all
	./tests/run-tests.sh $(BUILD)

bench: deps all
	./bench/run-bench.sh $(BUILD)

demo: deps all
	./tools/demo.sh $(BUILD)

install: all
	./tools/install.sh "$(BUILD)" "$(DESTDIR)" "$(PREFIX)"

clean:
	rm -rf $(BUILD)/obj $(BUILD)/bin $(BUILD)/tests $(BUILD)/bench $(BUILD)/libvigil.a $(ASAN_BUILD) $(FUZZ_BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
