"""Processes for the benchmark scripts: started with a raised file limit and a parent-death
signal, stopped together at the end, and their CPU time."""
import os
import resource
import signal
import subprocess

TICK = os.sysconf("SC_CLK_TCK")
STARTED = []  # every process a script started, stopped in `stop_all`


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_setup():
    """In each child: the file limit raised, and SIGTERM if the script dies without cleaning up."""
    raise_nofile()
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn(args, **kw):
    process = subprocess.Popen(args, preexec_fn=child_setup, **kw)
    STARTED.append(process)
    return process


def stop(process, timeout=20):
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)  # it may be paused
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in STARTED:
        STARTED.remove(process)


def stop_all():
    for process in reversed(list(STARTED)):
        stop(process, timeout=5)


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def cpu_seconds(pid):
    """CPU time of all of the process's threads: schedstat's nanoseconds where the kernel has
    them (utime+stime in /proc/PID/stat counts in 10 ms ticks), else utime+stime."""
    if os.path.exists(f"/proc/{pid}/schedstat"):
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total / 1e9
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK
