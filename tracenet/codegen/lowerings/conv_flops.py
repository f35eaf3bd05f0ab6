"""The work of a convolution, as every convolution kernel reports and sizes its threads by."""


def conv_flops(geo):
    """Twice the multiply-adds of the direct form of a convolution of geometry ``geo``
    (``conv.py``'s 3-d form): a faster form (Winograd, phases) reports that form's rate."""
    return 2 * geo["N"] * geo["O"] * (geo["C"] // geo["G"]) * geo["KD"] * geo["KH"] * \
        geo["KW"] * geo["OD"] * geo["OH"] * geo["OW"]
