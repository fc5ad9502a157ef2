"""kernel/acct.py: the comp_t encoding of acct(5) records."""

from lxsub.kernel.acct import encode_comp_t


def test_small_values_are_their_own_mantissa():
    assert encode_comp_t(0) == 0
    assert encode_comp_t(8191) == 8191


def test_larger_values_take_a_base_8_exponent_and_round():
    # 8192 = 1024 * 8: exponent 1 above the 13-bit mantissa
    assert encode_comp_t(8192) == (1 << 13) | 1024
    # the last bit shifted out of three (4) rounds up, as kernel/acct.c does
    assert encode_comp_t(8196) == (1 << 13) | 1025
    assert encode_comp_t(8195) == (1 << 13) | 1024


def test_values_beyond_the_exponent_saturate():
    assert encode_comp_t(1 << 40) == 0xFFFF
