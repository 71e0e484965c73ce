"""dpmesh_core.fit"""
