"""A two-host MPI run on one machine: two network namespaces joined by a veth pair play two hosts of one mpirun.

Open MPI starts the second host's daemon through its ssh agent (plm_ssh_agent), here a script that enters the
namespace (`ip netns exec`) instead of logging in; each namespace also gets a hostname of its own (`unshare --uts`),
as two machines would, so that Open MPI sees two nodes. Shared memory is off (`--mca btl tcp,self`) and TCP is
limited to the veth subnet, so the ranks can talk only over the link between the namespaces. Needs root and
`ip netns`; skips otherwise (and without mpi4py or mpirun, as tests/test_parallel.py does)."""
import json
import os
import shutil
import subprocess

import pytest
from conftest import CORPUS

# mpirun and one_process are test_parallel's fixtures, which pytest finds here by name
from test_parallel import GLOBAL_BATCH, assert_same_run, mpirun, one_process, results, train_cli  # noqa: F401

SUBNET = "10.199.0.0/24"
# Rank r runs on host HOSTS[r]: the namespace's name suffix, its veth address and its hostname.
HOSTS = [("a", "10.199.0.1", "host-a"), ("b", "10.199.0.2", "host-b")]
# What the ssh agent receives: the host (an address of the hostfile) and the command that starts Open MPI's daemon.
AGENT = """#!/bin/sh
host=$1; shift
case $host in
{cases}
  *) echo "no namespace for host $host" >&2; exit 1 ;;
esac
"""
CASE = """  {address}) exec ip netns exec {namespace} unshare --uts /bin/sh -c "hostname {hostname}; $*" ;;"""
# Run as the program of every rank: notes its rank, network namespace and hostname, then becomes the rank itself.
WHERE = ('echo "$OMPI_COMM_WORLD_RANK $(readlink /proc/self/ns/net) $(hostname)"'
         ' > "{directory}/rank.$OMPI_COMM_WORLD_RANK"; exec "$@"')


def ip(*arguments):
    return subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30, check=True).stdout


def namespace_inode(namespace):
    return os.stat(f"/run/netns/{namespace}").st_ino


def veth_bytes(namespace, device):
    """(bytes received, bytes sent) by the veth end `device` in `namespace`."""
    stats = json.loads(ip("-n", namespace, "-s", "-j", "link", "show", "dev", device))[0]["stats64"]
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


def remove_namespaces(namespaces):
    """End every process still in the namespaces (a daemon left by a killed mpirun), then delete them with their
    veth ends."""
    for namespace in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


@pytest.fixture
def two_hosts(mpirun, tmp_path):  # noqa: F811 (test_parallel's fixture)
    """(the two namespaces' names, the mpirun command that spans both). Namespace `gpt<pid>a` holds the veth end of
    the same name, with HOSTS[0]'s address, linked to `gpt<pid>b` in namespace `gpt<pid>b`; both namespaces, and any
    process left in them, are removed after the test whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("needs `ip` (iproute2) and `unshare` (util-linux)")
    names = [f"gpt{os.getpid()}{suffix}" for suffix, _, _ in HOSTS]  # unique per test process; veth names <= 15
    created = []
    try:
        for name in names:
            ip("netns", "add", name)
            created.append(name)
        ip("link", "add", names[0], "netns", names[0], "type", "veth", "peer", "name", names[1], "netns", names[1])
        for name, (_, address, _) in zip(names, HOSTS):
            ip("-n", name, "address", "add", f"{address}/24", "dev", name)
            ip("-n", name, "link", "set", name, "up")
            ip("-n", name, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as error:
        remove_namespaces(created)
        pytest.skip(f"cannot make network namespaces here: {getattr(error, 'stderr', None) or error}")
    try:
        agent = tmp_path / "agent.sh"
        agent.write_text(AGENT.format(cases="\n".join(CASE.format(address=address, namespace=name, hostname=hostname)
                                                      for name, (_, address, hostname) in zip(names, HOSTS))))
        agent.chmod(0o755)
        hostfile = tmp_path / "hosts"
        hostfile.write_text("".join(f"{address} slots=1\n" for _, address, _ in HOSTS))
        first_host = ["ip", "netns", "exec", names[0], "unshare", "--uts", "sh", "-c",
                      f'hostname {HOSTS[0][2]}; exec "$@"', "sh"]
        # --map-by node: one rank per host (the fixture's --oversubscribe would otherwise put both on the first)
        options = ["--hostfile", str(hostfile), "--map-by", "node", "--prtemca", "plm_ssh_agent", str(agent),
                   "--prtemca", "oob_tcp_if_include", SUBNET, "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
                   "--mca", "btl_tcp_if_include", SUBNET]
        launcher = [*first_host, *mpirun, *options, "sh", "-c", WHERE.format(directory=tmp_path), "sh"]
        yield names, launcher
    finally:
        remove_namespaces(names)


def test_two_hosts_reproduce_one_process(two_hosts, one_process, tmp_path):  # noqa: F811
    """Rank 0 in one namespace, rank 1 in the other, the all-reduce over the veth: the one-process run to 1e-12."""
    names, launcher = two_hosts
    before = [veth_bytes(name, name) for name in names]
    (tmp_path / "corpus.txt").write_text(CORPUS)
    completed = train_cli(launcher, tmp_path / "run", tmp_path / "corpus.txt", "--max-iters", "6", "--batch-size",
                          GLOBAL_BATCH // 2)
    after = [veth_bytes(name, name) for name in names]
    assert completed.stdout.count("step 6:") == 1
    assert_same_run(one_process, results(tmp_path / "run"))

    ranks = [(tmp_path / f"rank.{rank}").read_text().split() for rank in range(2)]
    assert [rank[0] for rank in ranks] == ["0", "1"]
    assert [rank[1] for rank in ranks] == [f"net:[{namespace_inode(name)}]" for name in names]
    assert [rank[2] for rank in ranks] == [hostname for _, _, hostname in HOSTS]

    # Each all-reduce of 2 ranks moves at least the whole gradient buffer each way (half reduced by the other rank,
    # half of the sums sent back), once per step: 6 steps of float64 gradients, the size of the parameters.
    gradient_bytes = 8 * sum(value.size for value in one_process[0].values())
    for name, (received, sent), (received_before, sent_before) in zip(names, after, before):
        assert received - received_before >= 6 * gradient_bytes, name
        assert sent - sent_before >= 6 * gradient_bytes, name
