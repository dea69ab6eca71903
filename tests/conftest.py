"Shared fixtures: a quickly trained real classifier and the Fashion-MNIST test set."
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
