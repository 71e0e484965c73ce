"""dpmesh_core.model"""
