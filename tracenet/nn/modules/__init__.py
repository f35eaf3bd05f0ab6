from .module import Module
from .container import Container, ModuleDict, ModuleList, ParameterDict, ParameterList, Sequential
from .linear import Bilinear, Identity, Linear
from .conv import Conv1d, Conv2d, Conv3d
from .activation import LogSoftmax, ReLU, Sigmoid, Softmax, Softmin, Tanh
from .pooling import AvgPool1d, AvgPool2d, AvgPool3d, MaxPool1d, MaxPool2d, MaxPool3d
from .loss import CrossEntropyLoss, MSELoss, NLLLoss
from .flatten import Flatten, Unflatten
from .dropout import Dropout
