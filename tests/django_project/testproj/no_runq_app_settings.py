"""The test project with RunqBackend in TASKS but without runq's app: a system check error."""

from testproj.settings import *  # noqa: F403
from testproj.settings import INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "runq.contrib.django"]
