"""The wording and once-only bookkeeping lynx's warnings share (`lynx_compile.messages`)."""

import threading
import time

from lynx_compile.messages import Once, some_names


def test_a_long_list_of_names_is_cut_and_says_so():
    names = [f"blocks.{index}.fc" for index in range(7)]
    assert some_names(names, shown=3) == "blocks.0.fc, blocks.1.fc, blocks.2.fc ..."
    assert some_names(names[:3], shown=3) == "blocks.0.fc, blocks.1.fc, blocks.2.fc"


class SlowToAnswer(set):
    """A set that waits before answering whether it holds a key: without the lock, every thread that asked before
    the first claim would find the key missing and claim it too."""

    def __contains__(self, key):
        held = super().__contains__(key)
        time.sleep(0.002)
        return held


def test_a_key_is_claimed_once_by_one_of_many_threads():
    once, claims, start = Once(), [], threading.Barrier(8)
    once._given = SlowToAnswer()

    def claim(key):
        start.wait()
        claims.extend(key for _ in range(50) if once.first(key))

    threads = [threading.Thread(target=claim, args=(index % 2,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claims) == [0, 1] and 0 in once and 1 in once and 2 not in once
