"""IpcSpace: the instance's SysV ids, made as ipc/util.c ipc_idr_alloc makes them."""

from __future__ import annotations

import time

from lxsub.kernel.ipc import MSG, SEM, IpcObject, IpcSpace, index_of, seq_of


def _obj() -> IpcObject:
    return IpcObject(0, 0, 0, 0, 0, 0o600, 1, 2)


def test_lowest_free_index_and_a_new_sequence_when_an_index_is_used_again():
    sp = IpcSpace()
    first = [sp.add(MSG, 100 + i, _obj()) for i in range(3)]
    assert first == [0, 1, 2]                       # seq 0, indices 0, 1, 2
    sp.drop(MSG, 1)
    again = sp.add(MSG, 200, _obj())
    assert (index_of(again), seq_of(again)) == (1, 1)      # index 1 again, seq grown
    assert sp.get(MSG, again).host_id == 200 and sp.get(MSG, 1) is None


def test_next_id_is_used_once_or_the_next_free_index_above():
    sp = IpcSpace()
    sp.next_id[SEM] = 5 << 15 | 9
    assert sp.add(SEM, 1, _obj()) == 5 << 15 | 9 and sp.next_id[SEM] == -1
    sp.next_id[SEM] = 5 << 15 | 9                   # taken: the next free index, same sequence
    assert sp.add(SEM, 2, _obj()) == 5 << 15 | 10
    assert sp.add(SEM, 3, _obj()) == 0              # back to the lowest free index


def test_tens_of_thousands_of_objects_are_made_quickly():
    """semget05 makes semmni (32000) sets: each id in about constant time."""
    sp = IpcSpace()
    t0 = time.monotonic()
    ids = [sp.add(SEM, i, _obj()) for i in range(32000)]
    assert ids[-1] == 31999 and time.monotonic() - t0 < 5
