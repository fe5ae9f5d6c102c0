"""DomainBed's MNIST_CNN shape: four 3x3 convs (64, 128, 128, 128), ReLU then GroupNorm(8), avg-pool, linear."""

from torch import nn


class MnistCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.relu = nn.ReLU()
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(128, num_classes)

    def features(self, x):
        x = self.bn0(self.relu(self.conv1(x)))
        x = self.bn1(self.relu(self.conv2(x)))
        x = self.bn2(self.relu(self.conv3(x)))
        x = self.bn3(self.relu(self.conv4(x)))
        return self.flatten(self.avgpool(x))

    def forward(self, x):
        return self.fc(self.features(x))
