"Shared fixtures: a quickly trained real classifier, the Fashion-MNIST test set, and real image batches for corruptions."
import pytest, torch
from mimbench.data import get_dataset

@pytest.fixture(scope='session')
def quick_model():
    "A micro ViT (patch 8) fine-tuned for 2 epochs on 8,000 Fashion-MNIST images (~80 % test accuracy), cached in the temp folder."
    from mimbench.evaluate import quick_classifier
    return quick_classifier()

@pytest.fixture(scope='session')
def fmnist_test():
    return get_dataset('fashion-mnist', 'test', channels=1)

@pytest.fixture(scope='session')
def colour():
    "The 20 real CIFAR-10 sample images (3 channels)."
    return get_dataset('cifar10-sample', 'test').get_batch(range(20))[0]

@pytest.fixture(scope='session')
def grey(fmnist_test):
    "The first 32 Fashion-MNIST test images (1 channel)."
    return fmnist_test.get_batch(range(32))[0]
