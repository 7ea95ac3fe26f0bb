"""Model factories (cnn, transfer, fast, dcgan), the custom layers saved models need (layers), saving and loading
(saving) and the detector extras stored beside a binary model (detector). Import the submodule you need."""
