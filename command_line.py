"""How every command of the project reads its command line and talks to its user when something is wrong.

Three jobs, shared by ``tf_convert_data``, ``train_ssd_network``, ``eval_ssd_network``,
``export_ssd_network``, ``ssd_detect`` and the other commands:

* :func:`parse_flags` reads a command's absl flags (TF-Slim's convention). Each command defines its
  flags on its own :class:`absl.flags.FlagValues` (never the global ``flags.FLAGS``, so that commands
  sharing flag names like ``--checkpoint_path`` can live in one process), and gets them back as a
  namespace. ``--help`` prints the command's doc and flags; an unknown flag, a bad value, a missing
  required flag or a stray argument is one ``ERROR:`` line naming it, exit status 2.
* :func:`check_options` validates every numeric option of a command against a table of
  :class:`Rule` s before any graph is built, and names each bad flag with the values it allows
  (all of them at once, so one run shows every mistake).
* :func:`run_command` runs a command's work and turns the failures a user can meet into one
  ``ERROR`` line that names the file or flag and says what to do, with an exit status that tells
  the families apart (:data:`EXIT_STATUS`). A programming error still shows its traceback.

Exit statuses (also in the README's troubleshooting section):

====  =======================================================================================
0     done
1     the run stopped by its own rule (a non-finite loss; ``--strict`` conversion; nothing usable)
2     a bad flag or input: fix the command line or the named file
3     a distributed worker lost its cluster (a ps task or the chief is gone)
4     a checkpoint or a data file is damaged: the message names it
5     the operating system refused: permission denied, disk full, a path that is a file...
6     TensorFlow failed at run time (out of memory, ...)
130   interrupted (Ctrl-C)
====  =======================================================================================
"""

import dataclasses
import errno
import inspect
import logging as std_logging
import math
import os
import sys
import textwrap
import threading
import types

from absl import flags, logging

EXIT_OK = 0
EXIT_STOPPED = 1
EXIT_USAGE = 2
EXIT_LOST_CLUSTER = 3
EXIT_DAMAGED = 4
EXIT_OS = 5
EXIT_TENSORFLOW = 6
EXIT_INTERRUPTED = 130
EXIT_STATUS = {
    EXIT_OK: "done",
    EXIT_STOPPED: "stopped by its own rule",
    EXIT_USAGE: "bad flag or input",
    EXIT_LOST_CLUSTER: "lost the cluster",
    EXIT_DAMAGED: "damaged checkpoint or data file",
    EXIT_OS: "refused by the operating system",
    EXIT_TENSORFLOW: "TensorFlow run-time failure",
    EXIT_INTERRUPTED: "interrupted",
}


class UsageError(ValueError):
    """A flag with a value the command cannot use; the message names the flag and what it allows."""


class DamagedFileError(Exception):
    """A checkpoint or data file that exists but cannot be read back; the message names it."""


# ----------------------------------------------------------------------------- command-line flags

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")
_HELP_WIDTH = 100


@dataclasses.dataclass(frozen=True)
class Positional:
    """The plain (non-flag) arguments a command takes, e.g. detect.py's image files: ``name`` in the
    namespace :func:`parse_flags` returns (a list), ``help`` for ``--help``, and how many at least."""

    name: str
    help: str
    at_least: int = 0


def parse_flags(flag_values, argv=None, program_doc=None, *, program=None, positional=None):
    """Parses a command line with ``flag_values`` (an :class:`absl.flags.FlagValues` holding the
    command's flags); returns a namespace with every flag's value (and, with ``positional``, the
    plain arguments as a list under ``positional.name``).

    ``argv``: the arguments without the program name (None: ``sys.argv[1:]``); absl reads
    ``--name=value``, ``--name value``, ``--flag``/``--noflag`` for booleans, repeats of a multi flag,
    ``--flagfile=FILE``; ``--`` ends the flags. ``program_doc``: the command's docstring, shown by
    ``--help``; ``program``: its name in the usage line (default: ``sys.argv[0]``'s file name).

    ``-h``/``--help``/``--helpfull`` print the doc and every flag with its help and default, then exit
    with status 0. An unknown flag, a value that does not parse, a validator that fails (absl
    ``register_validator``, ``DEFINE_enum``...), a required flag left out (``required=True`` or
    ``flags.mark_flag_as_required(name, flag_values=...)``) or a stray plain argument prints one line
    ``ERROR: ...`` naming it on stderr and exits with :data:`EXIT_USAGE` (``SystemExit``), as argparse
    did. The values of an earlier parse are forgotten first, so a command may parse twice.

    Then, as absl's ``app.run`` would: absl logging reads its own flags (``--verbosity``...) from the
    global ``flags.FLAGS``, which the command does not parse, so they are marked parsed (at their
    defaults), and absl's log handler is installed (lines like ``E0101 12:00:00.000000 123 file.py:45]
    message`` on stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    program = program or os.path.basename(sys.argv[0] or "command")
    flag_args = args[:args.index("--")] if "--" in args else args
    if any(arg in HELP_FLAGS for arg in flag_args):
        print(format_help(flag_values, program_doc, program=program, positional=positional), end="", flush=True)
        raise SystemExit(EXIT_OK)
    if flag_values.is_parsed():
        _unparse_quietly(flag_values)
    try:
        rest = flag_values([program, *args])[1:]
    except flags.UnrecognizedFlagError as error:
        _usage_error(_unknown_flag_message(error, flag_values))
    except (flags.Error, ValueError) as error:
        if not flag_values.is_parsed():  # a value that does not parse, a missing value (absl marks the flags
            _usage_error(_strip_flag_word(str(error)))  # parsed only once all are, then runs the validators)
        _usage_error(_validation_message(flag_values) or _strip_flag_word(str(error)))
    if positional is None and rest:
        _usage_error(f"unrecognized arguments: {' '.join(rest)} (this command takes only flags: --name=value)")
    if positional is not None and len(rest) < positional.at_least:
        _usage_error(f"the following arguments are required: {positional.name}")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.use_absl_handler()
    _log_tensorflow_through_absl()
    values = {name: flag_values[name].value for name in _flag_names(flag_values)}
    if positional is not None:
        values[positional.name] = rest
    return types.SimpleNamespace(**values)


def _log_tensorflow_through_absl():
    """TensorFlow's Python logger gets a handler of its own when it is first used before absl's handler
    is on the root logger (an import did); with both, each of its lines ('Restoring parameters from
    ...') would print twice. Its records go to the root's absl handler only."""
    tensorflow_logger = std_logging.getLogger("tensorflow")
    if any(isinstance(handler, logging.ABSLHandler) for handler in std_logging.getLogger().handlers):
        for handler in list(tensorflow_logger.handlers):
            tensorflow_logger.removeHandler(handler)


def flag_defaults(flag_values, overrides=None, what="options"):
    """The defaults of the flags in ``flag_values`` as a namespace, with ``overrides`` ({name: value};
    for tests and benchmarks, which call a command's work without a command line); a name that is not
    a flag is a ValueError ("unknown <what> [...]")."""
    values = {name: flag_values[name].default for name in _flag_names(flag_values)}
    unknown = set(overrides or {}) - set(values)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}")
    values.update(overrides or {})
    return types.SimpleNamespace(**values)


class _IntegerListParser(flags.ListParser):
    """A comma-separated list of integers ("1,8")."""

    def parse(self, argument):
        items = super().parse(argument)
        try:
            return [int(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(f"expected comma-separated integers, got {argument!r}") from None

    def flag_type(self):
        return "integer list"


def define_integer_list(name, default, help_text, flag_values):
    """``--name=1,8``: a flag holding a list of integers (absl has ``DEFINE_list`` for strings only)."""
    flags.DEFINE(_IntegerListParser(), name, default, help_text, flag_values=flag_values,
                 serializer=flags.CsvListSerializer(","))


def run_graph_command(flag_values, argv, program_doc, work, handlers=(), **parse_options):
    """A TensorFlow command's ``main``: parses its flags (:func:`parse_flags`), switches TensorFlow to
    graph mode, logs at INFO and runs ``work(options)`` under :func:`run_command`; returns the exit
    status."""
    options = parse_flags(flag_values, argv, program_doc, **parse_options)
    from tf_compat import tf1  # here: a bad command line is reported before TensorFlow loads

    tf1.disable_eager_execution()
    logging.set_verbosity(logging.INFO)
    return run_command(lambda: work(options), handlers)


def format_help(flag_values, program_doc=None, *, program="command", positional=None):
    """``--help``'s text: usage, the command's doc, then each flag (in definition order) with its help,
    default and kind, as absl prints them."""
    usage = f"usage: {program} [flags]" + (f" {positional.name}..." if positional else "")
    blocks = [usage]
    if program_doc:
        blocks.append(inspect.cleandoc(program_doc))
    if positional is not None:
        blocks.append("arguments:\n" + _wrap(f"{positional.name}: {positional.help}"))
    required = set(_required_flags(flag_values))
    entries = []
    for name in _flag_names(flag_values):
        flag = flag_values[name]
        text = _wrap(f"--{'[no]' if flag.boolean else ''}{name}: {flag.help or ''}".rstrip())
        notes = ["required"] if name in required else []
        if flag.default_as_str:
            notes.append(f"default: {flag.default_as_str}")
        if flag.parser.syntactic_help:
            notes.append(flag.parser.syntactic_help)
        entries.append("\n".join([text] + [_wrap(f"({note})", indent="    ") for note in notes]))
    blocks.append("flags:\n" + "\n".join(entries))
    return "\n\n".join(blocks) + "\n"


def _wrap(text, indent="  "):
    lines = []
    for index, paragraph in enumerate(text.split("\n")):
        first = indent if index == 0 else indent + "  "
        lines += textwrap.wrap(paragraph.strip(), _HELP_WIDTH, initial_indent=first,
                               subsequent_indent=indent + "  ") or [""]
    return "\n".join(lines)


def _flag_names(flag_values):
    """The flags' names in definition order (a short name is the same flag again)."""
    return [name for name in flag_values if flag_values[name].name == name]


def _required_message(name):
    return f"Flag --{name} must have a value other than None."  # absl's mark_flag_as_required


def _required_flags(flag_values):
    return [name for name in _flag_names(flag_values)
            if any(getattr(v, "message", None) == _required_message(name) for v in flag_values[name].validators)]


class _WithoutUnparseNote(std_logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("unparse_flags() called")


def _unparse_quietly(flag_values):
    """``flag_values.unparse_flags()`` (every flag back to its default, not parsed) without absl's INFO line
    saying so, which would land in the log of a command parsed twice in one process (tests)."""
    root = std_logging.getLogger()
    quiet = _WithoutUnparseNote()
    root.addFilter(quiet)
    try:
        flag_values.unparse_flags()
    finally:
        root.removeFilter(quiet)


def _usage_error(message):
    print("ERROR: " + " ".join(message.split()), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


def _strip_flag_word(message):
    """absl's "flag --batch_size=x: invalid literal..." -> "--batch_size=x: invalid literal..."."""
    return message[len("flag "):] if message.startswith("flag --") else message


def _unknown_flag_message(error, flag_values):
    message = f"unknown flag --{error.flagname}"
    try:
        from absl.flags import _helpers  # absl's own "did you mean", as its app.run prints it

        close = _helpers.get_flag_suggestions(error.flagname, _flag_names(flag_values))
    except (ImportError, AttributeError):
        close = []
    if close:
        message += f" (did you mean {' or '.join('--' + name for name in close)}?)"
    return message + "; --help lists the flags"


def _validation_message(flag_values):
    """After a validator failed: every required flag left out, else the first failing validator's
    message with the flags it checks."""
    missing = [name for name in _required_flags(flag_values) if flag_values[name].value is None]
    if missing:
        return f"the following flags are required: {', '.join('--' + name for name in missing)}"
    validators = {id(v): v for name in _flag_names(flag_values) for v in flag_values[name].validators}
    for validator in sorted(validators.values(), key=lambda v: v.insertion_index):
        try:
            validator.verify(flag_values)
        except flags.ValidationError as error:
            message = str(error)
            names = validator.get_flags_names()
            if any(f"--{name}" in message for name in names):
                return message
            shown = ", ".join(f"--{name}={flag_values[name].value!r}" for name in names)
            return f"{shown}: {message}"
    return None


# ----------------------------------------------------------------------------- option rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """A numeric option's allowed values: ``low``/``high`` bounds (None: unbounded), whether each bound
    is allowed, whether it must be an integer, and whether None (unset) is allowed."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    integer: bool = False
    optional: bool = False

    def describe(self):
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.low_inclusive else "("
            right = "]" if self.high_inclusive else ")"
            text = f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        elif self.low is not None:
            text = f"{kind} {'>=' if self.low_inclusive else '>'} {_number(self.low)}"
        elif self.high is not None:
            text = f"{kind} {'<=' if self.high_inclusive else '<'} {_number(self.high)}"
        else:
            text = f"a finite {kind.split()[-1]}"
        return text + (" (or unset)" if self.optional else "")

    def allows(self, value):
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return False
        return True


def _number(value):
    return str(int(value)) if float(value).is_integer() else str(value)


def positive_int(optional=False):
    return Rule(low=1, integer=True, optional=optional)


def non_negative_int(optional=False):
    return Rule(low=0, integer=True, optional=optional)


def positive(optional=False):
    return Rule(low=0, low_inclusive=False, optional=optional)


def non_negative(optional=False):
    return Rule(low=0, optional=optional)


def unit_interval(low_inclusive=True, high_inclusive=True, optional=False):
    return Rule(low=0, high=1, low_inclusive=low_inclusive, high_inclusive=high_inclusive, optional=optional)


def check_options(opts, rules, more_problems=()):
    """Raises :class:`UsageError` naming every option of ``opts`` (a namespace) that breaks its rule in
    ``rules`` ({option name: :class:`Rule`}; options absent from ``opts`` are not checked), and the
    command's own ``more_problems`` (messages; None entries are ignored), all in one message."""
    problems = []
    for name, rule in rules.items():
        if not hasattr(opts, name):
            continue
        value = getattr(opts, name)
        if not rule.allows(value):
            problems.append(f"--{name} must be {rule.describe()}, got {value!r}")
    problems += [problem for problem in more_problems if problem]
    if problems:
        raise UsageError("; ".join(problems))


def image_size_problem(text):
    """Why ``text`` is not a valid --image_size ('S' or 'H,W' with positive integers), or None."""
    from nets import nets_factory  # here: the converter's start needs none of the networks

    try:
        nets_factory.parse_image_size(text)
    except (ValueError, TypeError):
        return f"--image_size must be 'S' or 'H,W' with positive integers (e.g. 300 or 300,500), got {text!r}"
    return None


# ----------------------------------------------------------------------------- failures -> one line


def first_line(error):
    """The gist of an error's message: its first meaningful line. A TensorFlow error from a session
    runs pages long: "Graph execution error:", "Detected at node ... defined at", the Python stack,
    "Node: '<name>'", then the message itself, then the graph's stack again."""
    text = getattr(error, "message", None) or str(error) or ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("=")]
    for index, line in enumerate(lines):
        if line.startswith("Node: ") and index + 1 < len(lines):
            lines = lines[index + 1:]
            break
    skipped = ("Graph execution error:", "Detected at node", "File ", "Original stack trace")
    meaningful = [line for line in lines if not line.startswith(skipped)] or lines or [type(error).__name__]
    # "UNAVAILABLE: From /job:worker/replica:0/task:1:" continues on the next line.
    if meaningful[0].endswith(":") and len(meaningful) > 1:
        return f"{meaningful[0]} {meaningful[1]}"
    return meaningful[0]


def _line_with(error, words):
    text = getattr(error, "message", None) or str(error) or ""
    return next((line.strip() for line in text.splitlines() if words in line), None)


_OS_ADVICE = {
    errno.ENOSPC: "free some space or choose a directory on another disk",
    errno.EDQUOT: "free some space or choose a directory on another disk",
    errno.EACCES: "check the permissions, or choose a directory you can write to",
    errno.EPERM: "check the permissions, or choose a directory you can write to",
    errno.EROFS: "the file system is read-only: choose another directory",
    errno.EEXIST: "choose another path, or move the existing one away",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "the path is a directory: name a file",
}


def _describe_os_error(error):
    where = error.filename if error.filename is not None else "a file"
    if getattr(error, "filename2", None):
        where = f"{where} -> {error.filename2}"
    reason = error.strerror or str(error)
    advice = _OS_ADVICE.get(error.errno)
    return f"{where}: {reason}" + (f" ({advice})" if advice else "")


def describe_failure(error):
    """``(exit status, one-line message)`` for a failure a user can meet, or None for anything else
    (a programming error, which keeps its traceback)."""
    import tensorflow as tf  # here, so that tf_convert_data's start does not wait for TensorFlow

    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; the last checkpoint written (if any) is intact"
    if isinstance(error, DamagedFileError):
        return EXIT_DAMAGED, str(error)
    if isinstance(error, UnicodeDecodeError):
        return EXIT_USAGE, (f"a file is not valid UTF-8 text ({error.reason} at byte {error.start}); "
                            "save it as UTF-8")
    if isinstance(error, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE, _describe_os_error(error) if error.filename is not None else str(error)
    if isinstance(error, OSError):
        return EXIT_OS, _describe_os_error(error)
    if isinstance(error, (tf.errors.OpError, RuntimeError)):
        # TensorFlow reports a full disk as a ResourceExhaustedError (a checkpoint write) or a
        # RuntimeError (the summary writer's flush): the operating system's words tell.
        for words, advice in (("No space left on device", _OS_ADVICE[errno.ENOSPC]),
                              ("Disk quota exceeded", _OS_ADVICE[errno.EDQUOT]),
                              ("Permission denied", _OS_ADVICE[errno.EACCES]),
                              ("Read-only file system", _OS_ADVICE[errno.EROFS])):
            line = _line_with(error, words)
            if line:
                return EXIT_OS, f"{line} ({advice})"
    if isinstance(error, ValueError):
        return EXIT_USAGE, str(error)
    if isinstance(error, tf.errors.OpError):
        message = first_line(error)
        if isinstance(error, tf.errors.DataLossError):
            return EXIT_DAMAGED, f"damaged data: {message}"
        if isinstance(error, tf.errors.ResourceExhaustedError):
            return EXIT_TENSORFLOW, f"out of memory: {message} (reduce --batch_size or --image_size)"
        op = f" in op {error.op.name}" if getattr(error, "op", None) is not None else ""
        return EXIT_TENSORFLOW, f"TensorFlow {type(error).__name__}{op}: {message}"
    return None


def run_command(work, handlers=()):
    """Runs ``work()`` and returns its exit status (``work``'s own int, else 0: a command's work may
    return what it made).

    ``handlers``: ``(exception types, exit status, message function or None)`` tried in order before
    the common mapping (:func:`describe_failure`); each failure becomes one ERROR line."""
    previous_hook = threading.excepthook
    threading.excepthook = _thread_failure_hook(previous_hook)
    tensorflow_logger = std_logging.getLogger("tensorflow")
    coordinator_filter = _OneLineCoordinatorErrors()
    tensorflow_logger.addFilter(coordinator_filter)
    try:
        status = work()
    except BaseException as error:  # noqa: BLE001 - mapped below or re-raised
        for types_, status, message in handlers:
            if isinstance(error, types_):
                logging.error("%s", message(error) if message else error)
                return status
        described = describe_failure(error) if isinstance(error, Exception | KeyboardInterrupt) else None
        if described is None:
            raise
        status, message = described
        logging.error("%s", message)
        return status
    finally:
        threading.excepthook = previous_hook
        tensorflow_logger.removeFilter(coordinator_filter)
    return status if isinstance(status, int) and not isinstance(status, bool) else EXIT_OK


class _OneLineCoordinatorErrors(std_logging.Filter):
    """TensorFlow's Coordinator logs the error that stops training with its whole traceback and graph
    stack (pages); the command reports that error itself in one line, so this keeps the gist."""

    def filter(self, record):
        if str(record.msg).startswith("Error reported to Coordinator"):
            error = record.exc_info[1] if record.exc_info else (record.args[-1] if record.args else "")
            record.msg, record.args = "Error reported to Coordinator: %s", (first_line(error),)
            record.exc_info = record.exc_text = None
        return True


def _thread_failure_hook(previous_hook):
    """A ``threading.excepthook`` that turns a background thread's known failure (TensorFlow's event
    writer thread on a full disk, say) into one line; the main thread then fails with its own."""

    def hook(args):
        described = describe_failure(args.exc_value) if isinstance(args.exc_value, Exception) else None
        if described is None:
            previous_hook(args)
        else:
            name = args.thread.name if args.thread is not None else "a background thread"
            logging.error("%s stopped: %s", name, described[1])

    return hook
