package kubetest

// CephClusterYAML is Rook's CephCluster CRD (schema left open, with the
// status subresource) and one CephCluster rook-ceph/rook-ceph, for tests
// that set its health themselves: no Rook operator runs here, so a test
// writing status.ceph.health is the one fault that cannot be made real.
const CephClusterYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: rook-ceph}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: cephclusters.ceph.rook.io}
spec:
  group: ceph.rook.io
  scope: Namespaced
  names: {plural: cephclusters, singular: cephcluster, kind: CephCluster, listKind: CephClusterList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: ceph.rook.io/v1
kind: CephCluster
metadata: {name: rook-ceph, namespace: rook-ceph}
spec: {dataDirHostPath: /var/lib/rook}
`
