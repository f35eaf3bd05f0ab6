"""Loss reductions: the ``reduction`` strings, and the legacy ``size_average``/``reduce`` loss
arguments mapped to ``reduction`` as torch does."""
import warnings

NONE, MEAN, SUM = 0, 1, 2
_NAMES = {NONE: "none", MEAN: "mean", SUM: "sum"}


def get_enum(reduction):
    """0/1/2 for 'none'/'mean'/'sum'; the deprecated 'elementwise_mean' is 'mean' with a
    warning; anything else is a ValueError."""
    if reduction == "none":
        return NONE
    if reduction == "mean":
        return MEAN
    if reduction == "elementwise_mean":
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' "
                      "instead.", UserWarning, stacklevel=3)
        return MEAN
    if reduction == "sum":
        return SUM
    raise ValueError(f"{reduction} is not a valid value for reduction")


def normalize(reduction):
    """The reduction string the loss ops take, validated as ``get_enum`` does."""
    return _NAMES[get_enum(reduction)]


def legacy_get_string(size_average, reduce, emit_warning=True):
    warning = ("size_average and reduce args will be deprecated, please use reduction='{}' "
               "instead.")
    if size_average is None:
        size_average = True
    if reduce is None:
        reduce = True
    if size_average and reduce:
        ret = "mean"
    elif reduce:
        ret = "sum"
    else:
        ret = "none"
    if emit_warning:
        warnings.warn(warning.format(ret), UserWarning, stacklevel=4)
    return ret


def legacy_get_enum(size_average, reduce, emit_warning=True):
    return get_enum(legacy_get_string(size_average, reduce, emit_warning))


def resolve(size_average, reduce, reduction):
    """``reduction``, or the one the legacy arguments give (with torch's warning) when either
    of them is set; not validated."""
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce)
    return reduction
