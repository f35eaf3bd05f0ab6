"""Print the IR of the tutorial's LeNet before and after the pass pipeline.

Run: python examples/show_ir.py
"""
import tracenet as torch
import tracenet.nn as nn
import tracenet.nn.functional as F
from tracenet.executable import optimise


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


graph = torch.trace(Net(), torch.randn(1, 1, 32, 32))
print(graph)
print()
print(optimise(graph))
