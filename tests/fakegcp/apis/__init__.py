"""One module per Google API; ALL_APIS lists the ApiModule classes the server mounts."""

from .artifactregistry import ArtifactRegistry
from .cloudbuild import CloudBuild
from .cloudresourcemanager import ResourceManager
from .cloudscheduler import CloudScheduler
from .iam import Iam
from .iamcredentials import IamCredentials
from .logging import Logging
from .run import Run
from .secretmanager import SecretManager
from .serviceusage import ServiceUsage
from .sqladmin import SqlAdmin
from .storage import Storage

ALL_APIS = (ServiceUsage, SqlAdmin, Storage, Run, Iam, ResourceManager, SecretManager,
            ArtifactRegistry, CloudBuild, Logging, CloudScheduler, IamCredentials)
