"""A Kubernetes API emulator for tests: kmock (PyPI), a MOCK, not a Kubernetes.

kmock's `KubernetesEmulator` keeps objects in memory and serves get, list,
watch (existing objects as ADDED, then every change), create (POST, 409 when
the object exists), merge patch (PATCH) and delete. What it does not do, and
what Starling relies on, is added here in a subclass through its own request
hook (`_handle`), and nothing else:

- `metadata.resourceVersion`: every create and patch stamps a new one;
- optimistic concurrency: a PATCH that names a resourceVersion other than the
  stored one is refused with 409 Conflict, as the API server does (this is what
  makes two candidates unable to take a Lease together).

Not emulated (and not needed by the tests): label selectors on list/watch
(kmock ignores them: Starling's watcher checks the service label itself),
watch timeouts and bookmarks, `410 Gone`, RBAC, PUT.

Run as a script it serves on 127.0.0.1, writes a kubeconfig pointing at itself
to the path given as its argument and prints the port on stdout.
"""

import asyncio
import itertools
import sys

import kmock
from kmock._internal import enums

LEASES = "coordination.k8s.io/v1/leases"
ENDPOINT_SLICES = "discovery.k8s.io/v1/endpointslices"


class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions and 409 on a stale one."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(1)
        self.resources[LEASES] = kmock.ResourceInfo(kind="Lease", namespaced=True)
        self.resources[ENDPOINT_SLICES] = kmock.ResourceInfo(kind="EndpointSlice", namespaced=True)

    async def _handle(self, request):
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == enums.action.UPDATE and request.name is not None:
                key = (request.resource, request.namespace, request.name)
                wanted = request.data.get("metadata", {}).get("resourceVersion")
                if key in self.objects and not self.objects[key].deleted and wanted is not None:
                    stored = self.objects[key].get("metadata", {}).get("resourceVersion")
                    if stored != wanted:
                        return await self._render_error(kmock.KubernetesError(
                            status=409, reason="Conflict",
                            message=f"the object has been modified (resourceVersion {stored}, not {wanted})",
                        ))
            if request.action in (enums.action.CREATE, enums.action.UPDATE):
                request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self.versions))
        return await super()._handle(request)


def kubeconfig(port: int) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: kmock
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: kmock
  context:
    cluster: kmock
    user: kmock
    namespace: starling-test
current-context: kmock
users:
- name: kmock
  user:
    token: kmock-does-not-check-it
"""


async def serve(kubeconfig_path: str) -> None:
    async with VersionedEmulator() as handler, kmock.Server(handler) as server:
        with open(kubeconfig_path, "w") as file:
            file.write(kubeconfig(server.port))
        print(server.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
