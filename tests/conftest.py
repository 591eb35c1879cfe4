"""Session-wide test setup."""

from fxharden.zoo.options import make_data_env_absolute

# $FXHARDEN_DATA as a user types it (``../shared/data/cifar10``) is relative to where pytest was
# started; resolve it once, before any test changes folder or starts a process in another one
make_data_env_absolute()
