"""The legacy ``size_average``/``reduce`` loss arguments, mapped to ``reduction`` as torch does."""
import warnings


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


def resolve(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        return legacy_get_string(size_average, reduce)
    return reduction
